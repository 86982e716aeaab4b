"Losses of eln_nb.losses: hand-computed values, naive reference implementations, gradient routing, no NaN on empty inputs."
from math import log, exp
import pytest, torch
import torch.nn.functional as F
from eln_nb.losses import (resize_to, sup_loss, constrained_aux_loss, eln_loss, pseudo_label_loss,
                           pixel_contrastive_loss)

def close(a, b, tol=1e-6):
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    return abs(a - b) <= tol * max(1., abs(b))

# ---------------------------------------------------------------- sup_loss
def test_sup_loss_by_hand():
    logits = torch.tensor([[0., log(3), 5.], [0., 0., -1.]]).view(1, 2, 1, 3)
    assert close(sup_loss(logits, torch.tensor([[[0, 0, 255]]])), (log(2) + log(4/3)) / 2)

def test_sup_loss_matches_torch_ce_after_upsampling():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 4, 5, 7, generator=g), torch.randint(0, 4, (2, 9, 13), generator=g)
    target[0, :3] = 255
    up = F.interpolate(logits, size=(9, 13), mode='bilinear', align_corners=True)
    assert close(sup_loss(logits, target), F.cross_entropy(up, target, ignore_index=255), 1e-5)

def test_sup_loss_all_ignored_is_zero_with_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    l = sup_loss(logits, torch.full((1, 2, 2), 255))
    l.backward()
    assert l.item() == 0 and torch.isfinite(logits.grad).all()

def test_resize_to_align_corners():
    x = torch.arange(4.).view(1, 1, 2, 2)
    assert resize_to(x, (2, 2)) is x
    assert torch.equal(resize_to(x, (3, 3))[0, 0, 1], torch.tensor([1., 1.5, 2.]))

# ---------------------------------------------------------------- constrained_aux_loss
def test_constrained_aux_by_hand_and_gradients():
    ls = torch.tensor(0.1, requires_grad=True)
    la = torch.tensor([3., 4.], requires_grad=True)
    l = constrained_aux_loss([la[0], la[1]], ls)      # bounds 2 and 5: only the first counts
    assert close(l, 3.)
    l.backward()
    assert torch.equal(la.grad, torch.tensor([1., 0.])) and ls.grad is None
    assert close(constrained_aux_loss([torch.tensor(2.)], torch.tensor(0.1), alphas=(20,)), 2.)   # equality counts
    assert close(constrained_aux_loss([torch.tensor(6.), torch.tensor(6.)], torch.tensor(0.1)), 12.)

def test_constrained_aux_routes_gradient_only_to_aux_decoders():
    torch.manual_seed(0)
    enc, main, aux = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    h = enc(x)
    l_sup = F.cross_entropy(main(h), y)
    l_aux = F.cross_entropy(aux(h.detach()), y)
    total = constrained_aux_loss([l_aux], l_sup, alphas=(0.,))    # alpha 0: the aux loss always counts
    total.backward()
    assert all(p.grad is None for p in [*enc.parameters(), *main.parameters()])
    assert all(p.grad.abs().sum() > 0 for p in aux.parameters())

def test_constrained_aux_length_mismatch():
    with pytest.raises(ValueError): constrained_aux_loss([torch.tensor(1.)], torch.tensor(1.))

# ---------------------------------------------------------------- eln_loss
def naive_eln_loss(o, z, y, ignore_index=255, ignore_as_error=True):
    "Loops over pixels, straight from the official description."
    H, W = y.shape[-2:]
    o = F.interpolate(o.double(), size=(H, W), mode='bilinear', align_corners=True)[:, 0]
    pred = F.interpolate(z.double(), size=(H, W), mode='bilinear', align_corners=True).argmax(1)
    pix = [(b, i, j) for b in range(y.shape[0]) for i in range(H) for j in range(W)
           if ignore_as_error or y[b, i, j] != ignore_index]
    m = {p: float(pred[p] == y[p] and y[p] != ignore_index) for p in pix}
    n1 = sum(m.values()); n0 = len(pix) - n1
    tot = 0.
    for p in pix:
        s = 1 / (1 + exp(-float(o[p])))
        b = -(m[p] * log(s) + (1 - m[p]) * log(1 - s))
        tot += b if m[p] else b * n1 / n0
    return tot / len(pix)

def test_eln_loss_by_hand():
    target = torch.tensor([[[0, 1], [1, 255]]])
    pred = F.one_hot(torch.tensor([[[0, 1], [1, 0]]]), 2).permute(0, 3, 1, 2).float()
    o = torch.tensor([[[[log(3), 0.], [0., 0.]]]])
    assert close(eln_loss(o, pred, target), (log(4/3) + 5 * log(2)) / 4)             # N1=3, N0=1: error weight 3
    assert close(eln_loss(o, pred, target, ignore_as_error=False), (log(4/3) + 2 * log(2)) / 3)
    assert close(eln_loss(o[:, 0], pred, target), (log(4/3) + 5 * log(2)) / 4)       # [B,h,w] accepted

@pytest.mark.parametrize('ignore_as_error', [True, False])
def test_eln_loss_matches_naive_loop_across_resolutions(ignore_as_error):
    g = torch.Generator().manual_seed(1)
    o, z = torch.randn(2, 1, 3, 4, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    y = torch.randint(0, 3, (2, 7, 9), generator=g); y[1, 2:4] = 255
    assert close(eln_loss(o, z, y, ignore_as_error=ignore_as_error), naive_eln_loss(o, z, y, ignore_as_error=ignore_as_error), 1e-5)

def test_eln_loss_no_error_pixel_and_nothing_counted():
    o = torch.randn(1, 1, 2, 2, requires_grad=True)
    z = torch.tensor([5., 0.]).view(1, 2, 1, 1)
    l = eln_loss(o, z, torch.zeros(1, 4, 4, dtype=torch.long))          # every pixel correct: N0 = 0
    l.backward()
    assert torch.isfinite(l) and torch.isfinite(o.grad).all()
    assert close(l, F.binary_cross_entropy_with_logits(resize_to(o, (4, 4)), torch.ones(1, 1, 4, 4)))
    l = eln_loss(o, z, torch.full((1, 4, 4), 255), ignore_as_error=False)
    assert l.item() == 0

def test_eln_loss_gradient_only_to_eln():
    o = torch.randn(1, 1, 3, 3, requires_grad=True)
    z = torch.randn(1, 4, 3, 3, requires_grad=True)
    eln_loss(o, z, torch.randint(0, 4, (1, 6, 6))).backward()
    assert z.grad is None and o.grad.abs().sum() > 0

# ---------------------------------------------------------------- pseudo_label_loss
def test_pseudo_label_by_hand():
    zt = torch.tensor([[2., 2.], [0., 1.]]).view(1, 2, 1, 2)
    zs = torch.tensor([[log(3), 0.], [0., 0.]]).view(1, 2, 1, 2)
    assert close(pseudo_label_loss(zs, zt, torch.tensor([[[True, True]]])), (log(4/3) + log(2)) / 2)
    assert close(pseudo_label_loss(zs, zt, torch.tensor([[[False, True]]])), log(2))
    assert close(pseudo_label_loss(zs, zt), (log(4/3) + log(2)) / 2)

def test_pseudo_label_matches_ce_with_ignore_and_resizes_student():
    g = torch.Generator().manual_seed(2)
    zs, zt = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    keep = torch.rand(2, 8, 8, generator=g) > 0.4
    y = torch.where(keep, zt.argmax(1), torch.full_like(keep, 255, dtype=torch.long))
    ref = F.cross_entropy(resize_to(zs, (8, 8)), y, ignore_index=255)
    assert close(pseudo_label_loss(zs, zt, keep), ref, 1e-5)

def test_pseudo_label_empty_keep_and_gradient_routing():
    zs = torch.randn(2, 3, 4, 4, requires_grad=True)
    zt = torch.randn(2, 3, 4, 4, requires_grad=True)
    l = pseudo_label_loss(zs, zt, torch.zeros(2, 4, 4, dtype=torch.bool))
    l.backward()
    assert l.item() == 0 and torch.equal(zs.grad, torch.zeros_like(zs)) and zt.grad is None
    zs.grad = None
    pseudo_label_loss(zs, zt, torch.rand(2, 4, 4) > 0.5).backward()
    assert zs.grad.abs().sum() > 0 and torch.isfinite(zs.grad).all() and zt.grad is None

# ---------------------------------------------------------------- pixel_contrastive_loss
def naive_contrastive(ft, fs, pseudo, keep, tau=0.5):
    "Whole map as the window; loops over classes and pixel pairs; differentiable (torch float64 ops)."
    B, D, H, W = ft.shape
    t = ft.detach().double() / ft.detach().double().norm(dim=1, keepdim=True).clamp(min=1e-8)
    s = fs.double() / fs.double().norm(dim=1, keepdim=True).clamp(min=1e-8)
    V = [(b, i, j) for b in range(B) for i in range(H) for j in range(W) if keep[b, i, j] and pseudo[b, i, j] != 255]
    ls = []
    for c in sorted({int(pseudo[v]) for v in V}):
        A = [v for v in V if int(pseudo[v]) == c]
        sim = lambda p, q: torch.exp((t[p[0], :, p[1], p[2]] * s[q[0], :, q[1], q[2]]).sum() / tau)
        P = sum(sim(p, q) for p in A for q in A)
        N = sum((sim(p, q) for p in A for q in V if int(pseudo[q]) != c), torch.zeros((), dtype=torch.float64))
        P, N = P.clamp(min=1e-8), N.clamp(min=1e-8)
        ls.append(-torch.log(P / (P + N)) / len(A))
    return sum(ls) / len(ls) if ls else torch.zeros((), dtype=torch.float64)

def test_contrastive_by_hand():
    ft = torch.tensor([[3., 0., 1.], [0., 2., 1.]]).view(1, 2, 1, 3)
    fs = torch.tensor([[1., 0., -1.], [0., 5., 0.]]).view(1, 2, 1, 3)
    keep = torch.tensor([[[True, True, False]]])
    assert close(pixel_contrastive_loss(ft, fs, torch.tensor([[[0, 1, 0]]]), keep), log(1 + exp(-2)))
    assert close(pixel_contrastive_loss(ft, fs, torch.tensor([[[0, 1, 0]]]), keep, tau=1.), log(1 + exp(-1)))

@pytest.mark.parametrize('seed', range(4))
def test_contrastive_matches_naive_loop_whole_map(seed):
    g = torch.Generator().manual_seed(seed)
    B, D, H, W = 2, 5, 3, 4
    ft, fs = torch.randn(B, D, H, W, generator=g), torch.randn(B, D, H, W, generator=g, requires_grad=True)
    pseudo = torch.randint(0, 4, (B, H, W), generator=g)
    keep = torch.rand(B, H, W, generator=g) > 0.3
    pseudo[0, 0, :2] = 255
    got = pixel_contrastive_loss(ft, fs, pseudo, keep, tau=0.5, window_size=32)
    ref = naive_contrastive(ft, fs, pseudo, keep, tau=0.5)
    assert close(got, ref, 1e-5)
    gg, = torch.autograd.grad(got, fs)
    gr, = torch.autograd.grad(ref, fs)
    assert torch.allclose(gg, gr, atol=1e-5)

def test_contrastive_windows_match_naive_on_crops():
    g = torch.Generator().manual_seed(5)
    ft, fs = torch.randn(2, 3, 6, 7, generator=g), torch.randn(2, 3, 6, 7, generator=g)
    pseudo, keep = torch.randint(0, 3, (2, 6, 7), generator=g), torch.rand(2, 6, 7, generator=g) > 0.2
    got = pixel_contrastive_loss(ft, fs, pseudo, keep, windows=3, window_size=4, generator=torch.Generator().manual_seed(9))
    rg = torch.Generator().manual_seed(9)
    ys, xs = torch.randint(0, 3, (3,), generator=rg).tolist(), torch.randint(0, 4, (3,), generator=rg).tolist()
    crop = lambda x, i, j: x[..., i:i+4, j:j+4]
    ref = sum(naive_contrastive(crop(ft, i, j), crop(fs, i, j), crop(pseudo, i, j), crop(keep, i, j)) for i, j in zip(ys, xs)) / 3
    assert close(got, ref, 1e-5)

def test_contrastive_determinism():
    g = torch.Generator().manual_seed(3)
    ft, fs = torch.randn(2, 4, 10, 10, generator=g), torch.randn(2, 4, 10, 10, generator=g)
    pseudo, keep = torch.randint(0, 3, (2, 10, 10), generator=g), torch.rand(2, 10, 10, generator=g) > 0.3
    run = lambda seed, ws=4: pixel_contrastive_loss(ft, fs, pseudo, keep, window_size=ws, generator=torch.Generator().manual_seed(seed))
    assert run(0).item() == run(0).item()
    assert run(0).item() != run(1).item()
    assert run(0, ws=10).item() == run(1, ws=10).item() == pixel_contrastive_loss(ft, fs, pseudo, keep, window_size=32).item()

def test_contrastive_gradient_only_to_student_and_no_nan():
    ft = torch.randn(2, 4, 5, 5, requires_grad=True)
    fs = torch.randn(2, 4, 5, 5, requires_grad=True)
    pseudo = torch.randint(0, 3, (2, 5, 5))
    l = pixel_contrastive_loss(ft, fs, pseudo, torch.rand(2, 5, 5) > 0.5)
    l.backward()
    assert ft.grad is None and torch.isfinite(fs.grad).all() and fs.grad.abs().sum() > 0
    fs.grad = None
    l = pixel_contrastive_loss(ft, fs, pseudo, torch.zeros(2, 5, 5, dtype=torch.bool))
    l.backward()
    assert l.item() == 0 and torch.equal(fs.grad, torch.zeros_like(fs))
    z = torch.zeros(1, 4, 2, 2, requires_grad=True)                    # zero vectors: the norm clamp keeps it finite
    l = pixel_contrastive_loss(z, z, torch.tensor([[[0, 1], [1, 0]]]), torch.ones(1, 2, 2, dtype=torch.bool))
    l.backward()
    assert torch.isfinite(l) and torch.isfinite(z.grad).all()

def test_contrastive_under_autocast_and_bad_shapes():
    g = torch.Generator().manual_seed(4)
    ft, fs = torch.randn(1, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
    pseudo, keep = torch.randint(0, 2, (1, 4, 4), generator=g), torch.ones(1, 4, 4, dtype=torch.bool)
    ref = pixel_contrastive_loss(ft, fs, pseudo, keep)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = pixel_contrastive_loss(ft.bfloat16(), fs.bfloat16(), pseudo, keep)
    assert got.dtype == torch.float32 and close(got, ref, 2e-2)
    with pytest.raises(ValueError): pixel_contrastive_loss(ft, fs[..., :2], pseudo, keep)


@pytest.mark.parametrize('keep_p', [0.0, 0.3, 0.9, 1.0])
def test_contrastive_compact_equals_full_matrix(keep_p):
    "Dropping unkept pixels before the [V,V] matrix (the CPU path) gives the GPU path's loss and gradient."
    g = torch.Generator().manual_seed(3)
    ft, fs = torch.randn(2, 8, 12, 12, generator=g), torch.randn(2, 8, 12, 12, generator=g)
    pseudo, keep = torch.randint(0, 4, (2, 12, 12), generator=g), torch.rand(2, 12, 12, generator=g) < keep_p
    out = []
    for compact in (True, False):
        s = fs.clone().requires_grad_()
        l = pixel_contrastive_loss(ft, s, pseudo, keep, windows=3, window_size=6, generator=torch.Generator().manual_seed(1), compact=compact)
        l.backward(); out.append((l.detach(), s.grad))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-6) and torch.allclose(out[0][1], out[1][1], atol=1e-6)
