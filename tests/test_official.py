"Official mode: every deviation switch reaches what it changes, --official restores them all, and ImageNet weights come through torchvision."
import copy, subprocess, sys, time
import pytest, torch, torchvision
from torch import nn
from eln_nb.backbones import PretrainedWeightsError, hub_file
from eln_nb.cpu_kernels import Dropout
from eln_nb.cli import train_main
from eln_nb.data import make_loader, SyntheticScenes, LabelledView
from eln_nb.losses import constrained_aux_loss, sup_loss, eln_loss
from eln_nb.stage1 import ELNModels, MethodConfig, labelled_losses, eln_terms, make_optimizer, fill_zero_grads, param_groups
from eln_nb.train import make_config, build_models, method_config, official_values, DEVIATIONS, Trainer
from helpers import tiny_config, subprocess_env

C = 5
def _models(**kw):
    torch.manual_seed(0)
    return ELNModels(C, 'resnet18', eln_backbone='resnet18', pretrained=False, eln_pretrained=False, **kw)

def _batch(B=2, S=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {'image': torch.randn(B, 3, S, S, generator=g), 'label': torch.randint(0, C, (B, S, S), generator=g)}

@pytest.fixture
def fake_hub(tmp_path):
    "A torch hub folder holding torchvision-named ResNet-18 'ImageNet' weights made here (seeded), never downloaded."
    old = torch.hub.get_dir(); torch.hub.set_dir(str(tmp_path / 'hub'))
    try:
        torch.manual_seed(123)
        sd = torchvision.models.resnet18().state_dict()
        hub_file(18).parent.mkdir(parents=True); torch.save(sd, hub_file(18))
        yield sd
    finally: torch.hub.set_dir(old)

def test_official_sets_every_switch():
    for preset in ('demo', 'camvid', 'voc-r50', 'voc-r101', 'cityscapes-r50'):
        c = make_config(preset, official=True)
        assert all(getattr(c, k) == v for k, v in official_values().items()), preset
    assert make_config('voc-r50', official=True, fast_dropout=True).fast_dropout   # an option after --official wins

def test_switches_reach_the_networks(fake_hub):
    off = build_models(make_config('demo', official=True, pretrained='imagenet', eln_pretrained='imagenet'), C)
    ours = build_models(make_config('demo', pretrained='imagenet', eln_pretrained='imagenet'), C)
    # dilation: official ELN layer4 keeps dilation 1 (its BasicBlock ignores it); ours dilates
    assert {m.dilation for m in off.eln.encoder.layer4.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)} == {(1, 1)}
    assert {m.dilation for m in ours.eln.encoder.layer4.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)} == {(2, 2)}
    # shortcuts: official leaves them random, ours loads them; everything else arrives in both
    k = 'layer2.0.downsample.0.weight'
    assert torch.equal(ours.eln.encoder.state_dict()[k], fake_hub[k])
    assert not torch.equal(off.eln.encoder.state_dict()[k], fake_hub[k])
    for m in (off, ours):
        assert torch.equal(m.eln.encoder.layer1[0].conv1.weight, fake_hub['layer1.0.conv1.weight'])
        assert torch.equal(m.student.encoder.layer3[1].conv2.weight, fake_hub['layer3.1.conv2.weight'])
        assert torch.equal(m.student.encoder.layer2[0].downsample[0].weight, fake_hub[k])
        assert m.eln.encoder.conv1.weight.shape[1] == 3 + 1 + C
    assert all(d.projector is not None for d in off.aux) and all(d.projector is None for d in ours.aux)
    assert not any(d.fast for d in off.modules() if isinstance(d, Dropout))
    assert all(d.fast for d in ours.modules() if isinstance(d, Dropout))
    # frozen BatchNorm: the official optimizer leaves out the segmentation networks' BatchNorm affine parameters
    n = lambda cfg, m: sum(p.numel() for g in param_groups(m, official_frozen_bn=cfg.official_frozen_bn) for p in g['params'])
    assert n(make_config('demo', official=True), off) < n(make_config('demo'), off)
    # method switches reach MethodConfig
    mc = method_config(make_config('demo', official=True))
    assert (mc.eln_batched, mc.eln_reuse_preds, mc.ignore_as_error) == (False, False, True)
    assert method_config(make_config('demo', ignore_as_error=False, eln_batched=True)).ignore_as_error is False

def test_per_source_eln_equals_separate_forwards_in_train_mode():
    "The default (per-source) ELN forward: outputs, gradients and running statistics as K+1 separate calls; the pooled one is not."
    m = _models(); b = _batch()
    for d in m.modules():
        if isinstance(d, nn.Dropout): d.p = 0.     # dropout streams differ between one stacked call and K+1 calls
    preds = [torch.randn(2, C, 8, 8) * s for s in (1., 1., 4.)]
    def run(mm, cfg):
        torch.manual_seed(1); mm.zero_grad(set_to_none=True)
        ls = eln_terms(mm, b['image'], preds, b['label'], cfg); torch.stack(ls).sum().backward()
        return torch.stack(ls).detach(), [p.grad.clone() for p in mm.eln.parameters()], \
               [x.clone() for n, x in mm.eln.named_buffers() if 'running' in n]
    m2 = copy.deepcopy(m)
    a = run(copy.deepcopy(m), MethodConfig())                                          # one stacked forward, BN per source
    a2 = run(copy.deepcopy(m), MethodConfig(eln_stack=False))                          # K+1 calls
    torch.manual_seed(1); m2.zero_grad(set_to_none=True)                               # written out: one forward per source
    ls = [eln_loss(m2.eln(b['image'], z), z, b['label']) for z in preds]; torch.stack(ls).sum().backward()
    ref = (torch.stack(ls).detach(), [p.grad for p in m2.eln.parameters()], [x for n, x in m2.eln.named_buffers() if 'running' in n])
    torch.testing.assert_close(a[0], ref[0])
    for got in (a, a2):
        torch.testing.assert_close(got[0], ref[0])
        for x, y in zip(got[1] + got[2], ref[1] + ref[2]): torch.testing.assert_close(x, y)
    p = run(copy.deepcopy(m), MethodConfig(eln_batched=True))                            # pooled statistics: another function
    assert not torch.allclose(p[0], ref[0], atol=1e-3)

def test_eln_reuse_preds_switch_runs_the_official_passes():
    m = _models(); b = _batch()
    bn = m.student.encoder.bn1
    for cfg, n in ((MethodConfig(), 1), (MethodConfig(eln_reuse_preds=False), 3)):
        t = bn.num_batches_tracked.item(); labelled_losses(m, b, cfg)
        assert bn.num_batches_tracked.item() - t == n

def test_inactive_aux_decoders_get_no_backward():
    m = _models(); b = _batch()
    loss, logs = labelled_losses(m, b, MethodConfig())          # official alphas at random init: both inactive
    assert logs['aux0_on'] == 0 and logs['aux1_on'] == 0
    loss.backward()
    assert all(p.grad is None for p in m.aux.parameters())       # no backward ran through them
    assert all(p.grad is not None for p in m.eln.parameters())

def _steps(masked, n=5):
    "n AdamW steps in which the constraints switch on and off: our rule (drop + fill_zero_grads) or the 0/1-mask formulation."
    m = _models(fast_dropout=False)
    o = make_optimizer(m, lr=1e-3, backbone_lr=1e-3, weight_decay=0.1)
    plan = [(0., 0.), (1e9, 0.), (1e9, 1e9), (0., 1e9), (1e9, 1e9)]   # step 0 activates both, so both have an AdamW state
    for s in range(n):
        cfg = MethodConfig(alphas=plan[s]); b = _batch(seed=s)
        torch.manual_seed(s)
        if masked:
            x, y = b['image'], b['label']
            high, low = m.student.encode(x); z = m.student.decode(high, low)[0]; l_sup = sup_loss(z, y)
            aux = m.aux(high, low)
            l_aux = constrained_aux_loss([sup_loss(a, y) for a in aux], l_sup, cfg.alphas)
            l_eln = torch.stack(eln_terms(m, x, [a.detach() for a in aux] + [z.detach()], y, cfg)).sum()
            loss = l_sup + l_aux + l_eln
        else: loss, _ = labelled_losses(m, b, cfg)
        o.zero_grad(set_to_none=True); loss.backward()
        if not masked: fill_zero_grads(o)
        o.step()
    return m.state_dict()

def test_dropping_inactive_aux_matches_the_masked_formulation():
    "Once each decoder has learned once, parameters after N steps equal those of the 0/1-mask formulation (zeros seen by AdamW)."
    a, b = _steps(masked=False), _steps(masked=True)
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)

def test_without_fill_zero_grads_adamw_would_skip_inactive_decoders():
    m = _models(); o = make_optimizer(m, weight_decay=0.1)
    loss, _ = labelled_losses(m, _batch(), MethodConfig(alphas=(0., 0.))); loss.backward(); o.step()
    w = m.aux[0].classifier[-1].weight.detach().clone() if hasattr(m.aux[0], 'classifier') else next(m.aux.parameters()).detach().clone()
    o.zero_grad(set_to_none=True)
    loss, _ = labelled_losses(m, _batch(seed=1), MethodConfig()); loss.backward()      # inactive now
    assert all(p.grad is None for p in m.aux.parameters())
    fill_zero_grads(o)
    assert all(p.grad is not None and not p.grad.any() for p in m.aux.parameters())
    o.step()
    w2 = m.aux[0].classifier[-1].weight if hasattr(m.aux[0], 'classifier') else next(m.aux.parameters())
    assert not torch.equal(w, w2)                                # moments and weight decay still moved it

def test_partial_batches_reach_the_loader(tmp_path):
    c = tiny_config(tmp_path, partial_batches=True, synthetic_n=10, split=2, batch_size=2)   # 5 labelled images
    t = Trainer(c)
    sizes = [t._loader('lab')['image'].shape[0] for _ in range(4)]
    assert sizes == [2, 2, 1, 2]
    t2 = Trainer(tiny_config(tmp_path / 'b', synthetic_n=10, split=2, batch_size=2))
    assert [t2._loader('lab')['image'].shape[0] for _ in range(4)] == [2, 2, 2, 2]

def test_imagenet_weights_from_the_hub_cache(fake_hub, tmp_path):
    c = make_config('demo', pretrained='imagenet', eln_pretrained='imagenet')
    m = build_models(c, C)
    assert torch.equal(m.student.encoder.layer4[1].conv2.weight, fake_hub['layer4.1.conv2.weight'])
    assert torch.equal(m.eln.encoder.layer4[1].conv2.weight, fake_hub['layer4.1.conv2.weight'])
    assert torch.equal(m.teacher.encoder.bn1.running_var, fake_hub['bn1.running_var'])

def test_paper_preset_without_weights_stops_at_once(tmp_path, capsys):
    "voc-r50 on a tiny fake VOC, an empty hub cache and downloads off: exit 2 at once, naming the file and the fetch command."
    voc = tmp_path / 'VOC2012'
    for d in ('JPEGImages', 'SegmentationClassAug', 'ImageSets/Segmentation'): (voc / d).mkdir(parents=True)
    (voc / 'ImageSets/Segmentation/trainaug.txt').write_text('a\n'); (voc / 'ImageSets/Segmentation/val.txt').write_text('a\n')
    old = torch.hub.get_dir(); torch.hub.set_dir(str(tmp_path / 'empty_hub'))
    try:
        t = time.time()
        assert train_main(['--preset', 'voc-r50', '--data-root', str(voc), '--out', str(tmp_path / 'run')]) == 2
        assert time.time() - t < 30
    finally: torch.hub.set_dir(old)
    err = capsys.readouterr().err
    assert 'resnet50-0676ba61.pth' in err and 'ResNet50_Weights.IMAGENET1K_V1.get_state_dict' in err and '--pretrained none' in err
    assert not (tmp_path / 'run' / 'last.pt').exists()

def test_random_init_needs_explicit_none(tmp_path):
    assert make_config('voc-r50').pretrained == 'imagenet' and make_config('voc-r50', pretrained='none').pretrained == 'none'

def test_official_dry_run_console(tmp_path):
    r = subprocess.run([sys.executable, '-m', 'eln_nb.cli', '--preset', 'voc-r50', '--official', '--dry-run'],
                       capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert f'(0 of {len(DEVIATIONS) + 1} in this run' in r.stdout
    for k in DEVIATIONS: assert '--' + k.replace('_', '-') in r.stdout
    r = subprocess.run([sys.executable, '-m', 'eln_nb.cli', '--preset', 'voc-r50', '--dry-run'],
                       capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert '* --eln-dilate' in r.stdout and '* --official-frozen-bn' in r.stdout

def test_index_table_names_every_switch():
    import json
    from pathlib import Path
    nb = json.loads((Path(__file__).parents[1] / 'nbs' / 'index.ipynb').read_text())
    text = ''.join(''.join(c['source']) for c in nb['cells'])
    for k in DEVIATIONS: assert f"`--{k.replace('_', '-')}`" in text, k
