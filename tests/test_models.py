"Networks (01-04): shapes, offline pretrained loading, parameter counts, gradient routing, channels_last/autocast/SyncBN/compile."
import math, warnings
from os import environ
import pytest, torch, torch.nn as nn, torchvision
from eln_nb import backbones
from eln_nb.backbones import ResNetEncoder
from eln_nb.aspp import ASPP
from eln_nb.decoders import Decoder, SegModel, AuxDecoders
from eln_nb.eln import ELN, entropy_map

def n_params(m): return sum(p.numel() for p in m.parameters())
def down(n, k): # spatial size after k stride-2 stages (each ceil(n/2))
    for _ in range(k): n = math.ceil(n / 2)
    return n

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

# ---------------------------------------------------------------- shapes
@pytest.mark.parametrize('depth', [18, 34, 50, 101])
@pytest.mark.parametrize('os', [8, 16])
def test_segmodel_shapes_every_depth(depth, os):
    m = SegModel(3, f'resnet{depth}', os, pretrained=False).eval()
    x = torch.randn(1, 3, 67, 53)
    with torch.no_grad(): (high, low), (z, e) = m.encode(x), m(x)
    ch = 512 if depth < 50 else 2048
    assert high.shape == (1, ch, down(67, 4 if os == 16 else 3), down(53, 4 if os == 16 else 3))
    assert low.shape == (1, ch // 8, down(67, 2), down(53, 2)) and m.encoder.low_channels == ch // 8
    assert z.shape == (1, 3, 17, 14) and e.shape == (1, 128, 17, 14)

@pytest.mark.parametrize('depth,os,size', [(18, 8, 321), (18, 16, 321), (34, 8, 321), (34, 16, 321), (18, 8, 505), (34, 16, 505)])
def test_segmodel_odd_sizes_small_depths(depth, os, size):
    m = SegModel(5, f'resnet{depth}', os, pretrained=False).eval()
    with torch.no_grad(): z, e = m(torch.randn(1, 3, size, size))
    assert z.shape == (1, 5, down(size, 2), down(size, 2)) and e.shape[1:] == (128, down(size, 2), down(size, 2))

@pytest.mark.parametrize('depth,os,size', [(50, 16, 505), (101, 16, 321), (50, 8, 321)])
def test_segmodel_odd_sizes_big_depths(depth, os, size):
    m = SegModel(21, f'resnet{depth}', os, pretrained=False).eval()
    with torch.no_grad(): (high, _), (z, _) = m.encode(x := torch.randn(1, 3, size, size)), m(x)
    assert high.shape[-1] == down(size, 4 if os == 16 else 3) and z.shape == (1, 21, down(size, 2), down(size, 2))

@pytest.mark.parametrize('os', [8, 16])
def test_eln_shapes(os):
    eln = ELN(4, 'resnet18', os, pretrained=False).eval()
    with torch.no_grad(): y = eln(torch.randn(2, 3, 321, 321), torch.randn(2, 4, 81, 81))
    assert y.shape == (2, 1, 81, 81)
    assert ELN(4, 'resnet18', pretrained=False, out_channels=4).eval()(torch.randn(1, 3, 33, 33), torch.randn(1, 4, 9, 9)).shape == (1, 4, 9, 9)

def test_multigrid_dilations():
    enc = ResNetEncoder(50, 16, multi_grid=True, pretrained=False)
    assert [b.conv2.dilation[0] for b in enc.layer4] == [2, 4, 8] and enc.layer4[0].conv2.stride == (1, 1)
    enc = ResNetEncoder(34, 8, multi_grid=False, pretrained=False)
    assert [b.conv1.dilation[0] for b in enc.layer3] == [2] * 6 and [b.conv1.dilation[0] for b in enc.layer4] == [4] * 3

# ---------------------------------------------------------------- pretrained weights
def _tv_state(depth, tmp_path, name='w.pth', drop_nbt=False):
    sd = getattr(torchvision.models, f'resnet{depth}')().state_dict()
    for v in sd.values():
        if v.is_floating_point(): v.uniform_()  # distinctive values, BN running stats included
    sd = {k: v for k, v in sd.items() if not (drop_nbt and k.endswith('num_batches_tracked'))}
    torch.save(sd, p := tmp_path / name)
    return sd, p

def _arrived(enc, sd, skip=('fc.',)):
    mine = enc.state_dict()
    return all(torch.equal(mine[k], v) for k, v in sd.items() if not k.startswith(skip))

@pytest.mark.parametrize('depth', [18, 50])
def test_pretrained_from_file_every_tensor(depth, tmp_path):
    sd, p = _tv_state(depth, tmp_path)
    enc = ResNetEncoder(depth, 16, pretrained=p)
    assert _arrived(enc, sd) and set(enc.state_dict()) == {k for k in sd if not k.startswith('fc.')}
    assert enc.weights == p

def test_pretrained_legacy_file_without_num_batches_tracked(tmp_path):
    sd, p = _tv_state(18, tmp_path, drop_nbt=True)  # like the official resnet50-19c8e357.pth
    assert _arrived(ResNetEncoder(18, 8, pretrained=p), sd)

def test_pretrained_from_hub_cache_and_modes(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    try:
        monkeypatch.setattr(backbones, '_warned', [])
        with pytest.raises(FileNotFoundError): ResNetEncoder(18, pretrained=True)
        with pytest.raises(FileNotFoundError): ResNetEncoder(18, pretrained=tmp_path / 'missing.pth')
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            ResNetEncoder(18, pretrained=False)
            assert not w
            a, b = ResNetEncoder(18), ResNetEncoder(34)  # auto, nothing cached: random init, ONE warning
            assert len(w) == 1 and 'RANDOM' in str(w[0].message)
            assert a.weights is None and b.weights is None
        (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
        sd, p = _tv_state(18, tmp_path / 'hub' / 'checkpoints', 'resnet18-f37072fd.pth')
        for pre in (None, True):
            enc = ResNetEncoder(18, pretrained=pre)
            assert enc.weights == p and _arrived(enc, sd)
    finally: torch.hub.set_dir(old)

def test_wide_input_official_and_copy_rgb(tmp_path):
    sd, p = _tv_state(34, tmp_path)
    eln = ELN(21, 'resnet34', pretrained=p)
    c1 = eln.encoder.conv1.weight
    assert c1.shape == (64, 25, 7, 7) and not torch.equal(c1[:, :3], sd['conv1.weight'])  # official: fresh conv1
    # Deviation: every other pretrained tensor arrives, the projection shortcuts included
    assert _arrived(eln.encoder, sd, skip=('fc.', 'conv1.')) and any('downsample' in k for k in sd)
    off = ELN(21, 'resnet34', pretrained=p, random_shortcuts=True)  # official: shortcuts stay random
    assert not torch.equal(off.encoder.layer2[0].downsample[0].weight, sd['layer2.0.downsample.0.weight'])
    assert _arrived(off.encoder, sd, skip=('fc.', 'conv1.', 'layer2.0.downsample', 'layer3.0.downsample', 'layer4.0.downsample'))
    cp = ELN(21, 'resnet34', pretrained=p, copy_rgb=True).encoder.conv1.weight
    assert torch.equal(cp[:, :3], sd['conv1.weight']) and not cp[:, 3:].any()

# ---------------------------------------------------------------- official sizes
def test_official_parameter_counts():
    seg = SegModel(21, 'resnet50', 16, multi_grid=True, pretrained=False)
    assert n_params(seg.encoder) == 23_508_032
    assert n_params(seg.decoder) == 17_073_909
    assert n_params(ELN(21, 'resnet34', 16, pretrained=False)) == 26_911_265
    assert n_params(AuxDecoders(21, 2, proj_dim=128)) == 2 * 17_073_909
    assert sum(isinstance(m, nn.Dropout) for m in ELN(21, 'resnet18', pretrained=False).modules()) == 3

# ---------------------------------------------------------------- gradient routing
def test_aux_decoder_loss_never_reaches_encoder():
    seg = SegModel(4, 'resnet18', pretrained=False)
    aux = AuxDecoders(4, 2, seg.encoder.high_channels, seg.encoder.low_channels)
    high, low = seg.encode(torch.randn(2, 3, 33, 33))
    outs = aux(high, low)
    assert len(outs) == 2 and outs[0].shape == (2, 4, 9, 9)
    sum(o.logsumexp(1).mean() for o in outs).backward()
    assert all(p.grad is None for p in seg.parameters())
    assert all(p.grad is not None for d in aux for p in d.parameters())
    assert not torch.equal(aux[0].aspp.project[0].weight, aux[1].aspp.project[0].weight)

def test_eln_loss_never_reaches_segmentation_network():
    seg, eln = SegModel(4, 'resnet18', pretrained=False), ELN(4, 'resnet18', pretrained=False)
    x = torch.randn(2, 3, 33, 33)
    z, _ = seg(x)
    nn.functional.binary_cross_entropy_with_logits(eln(x, z)[:, 0], torch.ones(2, 9, 9)).backward()
    assert all(p.grad is None for p in seg.parameters())
    assert all(p.grad is not None for p in eln.parameters())

# ---------------------------------------------------------------- modes
def test_dropout_false_is_gt_mode():
    seg = SegModel(4, 'resnet18', pretrained=False).train()
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(seg(x, dropout=False)[0], seg(x, dropout=False)[0])
        assert not torch.equal(seg(x)[0], seg(x)[0])
    assert seg.training and all(m.training for m in seg.modules())  # BN mode untouched

def test_entropy_map():
    z = torch.randn(2, 6, 5, 7)
    p = z.softmax(1)
    torch.testing.assert_close(entropy_map(z), -(p * p.log()).sum(1))
    assert entropy_map(torch.full((1, 3, 2, 2), -1e4).index_fill(1, torch.tensor([0]), 1e4)).abs().max() < 1e-6

def _nets():
    seg = SegModel(4, 'resnet18', pretrained=False)
    return seg, AuxDecoders(4, 2, seg.encoder.high_channels, seg.encoder.low_channels), ELN(4, 'resnet18', pretrained=False)

def _run(seg, aux, eln, x, backward=True):
    high, low = seg.encode(x)
    z, e = seg.decode(high, low)
    outs = [z, e, *aux(high, low), eln(x, z)]
    if backward: sum(o.float().square().mean() for o in outs).backward()
    return outs

def test_channels_last_matches_contiguous():
    nets, x = _nets(), torch.randn(2, 3, 45, 45)
    for n in nets: n.eval()
    with torch.no_grad():
        ref = _run(*nets, x, backward=False)
        for n in nets: n.to(memory_format=torch.channels_last)
        cl = _run(*nets, x.contiguous(memory_format=torch.channels_last), backward=False)
    for a, b in zip(ref, cl): torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

def test_autocast_bf16_channels_last_train_step():
    nets, x = _nets(), torch.randn(2, 3, 45, 45).contiguous(memory_format=torch.channels_last)
    for n in nets: n.to(memory_format=torch.channels_last).train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = _run(*nets, x)
    assert all(o.dtype == torch.bfloat16 and torch.isfinite(o).all() for o in outs)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n in nets for p in n.parameters())

def test_convert_sync_batchnorm():
    nets = [nn.SyncBatchNorm.convert_sync_batchnorm(n) for n in _nets()]
    for n in nets:
        assert not any(type(m) is nn.BatchNorm2d for m in n.modules())
        assert any(isinstance(m, nn.SyncBatchNorm) for m in n.modules())
    outs = _run(*nets, torch.randn(2, 3, 33, 33))  # no process group: SyncBN behaves as BN on CPU
    assert outs[-1].shape == (2, 1, 9, 9)

@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not environ.get('ELN_NB_SLOW'), reason='slow (minutes of inductor compilation on CPU): set ELN_NB_SLOW=1')
def test_torch_compile():
    seg, aux, eln = [n.eval() for n in _nets()]
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        ref = seg(x)[0], eln(x, seg(x)[0])
        cseg, celn = torch.compile(seg), torch.compile(eln)
        z = cseg(x)[0]
        out = z, celn(x, z)
    for a, b in zip(ref, out): torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


# --- CPU speed-ups of 02_aspp: same maths as the stock modules -------------------------------------------------------
from eln_nb.cpu_kernels import Dropout, AtrousConv2d, tap_fraction, keep_mask


@pytest.mark.parametrize('p', [0.1, 0.5, 0.9])
def test_dropout_rate_and_scale(p):
    torch.manual_seed(0)
    y = Dropout(p)(torch.ones(8, 32, 41, 41))
    assert abs((y != 0).float().mean().item() - (1 - p)) < 0.004
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    assert abs(y.mean().item() - 1) < 0.02                      # E[dropout(x)] = x


def test_dropout_mask_bits_are_uniform():
    torch.manual_seed(0)
    m = keep_mask((1 << 20,), 0.5)                              # p = 0.5 compares the top bit of each 16-bit draw
    assert abs(m.float().mean().item() - 0.5) < 0.003
    m4 = m.view(-1, 4).float().mean(0)                          # each of the four 16-bit words of an int64 is used alike
    assert (m4 - 0.5).abs().max() < 0.005


@pytest.mark.parametrize('d,size', [(12, 21), (18, 21), (6, 21), (18, 9)])
@pytest.mark.parametrize('cl', [False, True])
def test_atrous_conv_matches_conv2d(d, size, cl):
    torch.manual_seed(0)
    a = AtrousConv2d(16, 8, 3, padding=d, dilation=d, bias=False)
    b = torch.nn.Conv2d(16, 8, 3, padding=d, dilation=d, bias=False); b.load_state_dict(a.state_dict())
    x = torch.randn(2, 16, size, size + 3)
    if cl: a, b, x = a.to(memory_format=torch.channels_last), b.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(2, 8, size, size + 3)
    ya, yb = a(xa), b(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-4)
    ya.backward(g); yb.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.weight.grad, b.weight.grad, rtol=1e-4, atol=1e-3)


def test_atrous_conv_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    a = AtrousConv2d(64, 32, 3, padding=12, dilation=12, bias=False)
    assert tap_fraction(21, 21, 12) < 0.5                       # this size takes the custom backward
    x = torch.randn(2, 64, 21, 21, requires_grad=True)
    a(x).square().mean().backward(); g32 = a.weight.grad.clone(); a.weight.grad = None
    with torch.autocast('cpu', dtype=torch.bfloat16): y = a(x)
    assert y.dtype == torch.bfloat16
    y.float().square().mean().backward()
    assert a.weight.grad.dtype == torch.float32
    assert (a.weight.grad - g32).abs().max() < 0.03 * g32.abs().max()
