"""#12 item 2: is one student forward over the labelled, weak and strong batches (BatchNorm per chunk, `per_source_bn`)
faster than three forwards? Times forward+backward of the official student (ResNet-50 DeepLabV3+, 21 classes) at
321x321, batch 2 per source, fp32, 2 threads; alternates the two ways; checks that they give the same loss."""
import json, statistics, sys, time
import torch
from eln_nb.decoders import SegModel
from eln_nb.eln import per_source_bn
torch.set_num_threads(2)
torch.manual_seed(0)
m = SegModel(21, 'resnet50', pretrained=False).train()
for mod in m.modules():                                   # dropout off: both ways must see the same masks
    if isinstance(mod, torch.nn.Dropout) or type(mod).__name__ == 'Dropout': mod.p = 0.0
S = int(sys.argv[2]) if len(sys.argv) > 2 else 321
xs = [torch.randn(2, 3, S, S) for _ in range(3)]
def separate():
    return sum(m(x)[0].float().square().mean() for x in xs)
def stacked():
    with per_source_bn(m, 3): z = m(torch.cat(xs))[0]
    return sum(c.float().square().mean() for c in z.chunk(3))
def timed(f):
    m.zero_grad(set_to_none=True)
    t = time.perf_counter(); loss = f(); loss.backward(); return time.perf_counter() - t, loss.item()
a, b = timed(separate)[1], timed(stacked)[1]
print('loss separate %.6f stacked %.6f' % (a, b), flush=True)
ts = {'separate': [], 'stacked': []}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
    for k, f in (('separate', separate), ('stacked', stacked)): ts[k].append(timed(f)[0])
print(json.dumps({k: {'median_s': statistics.median(v), 'min_s': min(v), 'times_s': v} for k, v in ts.items()}))
