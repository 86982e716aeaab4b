"Metrics of eln_nb.metrics: hand values, naive per-pixel references, conventions for empty cases, merging across ranks."
import math, os, tempfile
import pytest, torch
import torch.nn.functional as F
import torch.distributed as dist
import torch.multiprocessing as mp
from eln_nb.metrics import (to_labels, confusion_matrix, iou_from_matrix, ConfusionMatrix, miou, error_counts,
                            error_localization_scores, ErrorLocalizationMeter)

# ---------------------------------------------------------------- confusion matrix
def test_confusion_matrix_by_hand():
    target, pred = torch.tensor([[[0, 0, 1, 1, 255]]]), torch.tensor([[[0, 1, 1, 1, 0]]])
    cm = ConfusionMatrix(2).update(pred, target)
    assert cm.mat.dtype == torch.int64 and torch.equal(cm.mat, torch.tensor([[1, 1], [0, 2]]))
    assert torch.allclose(cm.iou(), torch.tensor([1/2, 2/3], dtype=torch.float64))
    assert math.isclose(cm.miou(), 7/12) and math.isclose(cm.pixel_accuracy(), 3/4)
    assert math.isclose(miou(pred, target, 2), 7/12)

def test_absent_class_is_nan_and_left_out_of_the_mean():
    target, pred = torch.tensor([[[0, 0, 1, 1]]]), torch.tensor([[[0, 1, 1, 1]]])
    cm = ConfusionMatrix(4).update(pred, target)
    iou = cm.iou()
    assert iou[2:].isnan().all() and math.isclose(cm.miou(), 7/12)
    cm = ConfusionMatrix(3).update(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 0]]]))   # class 2 predicted, never labelled
    assert cm.iou()[2] == 0 and cm.iou()[1].isnan() and math.isclose(cm.miou(), 0.25)

def test_labels_outside_range_are_skipped():
    target = torch.tensor([[[0, -1, 1, 7, 255]]])
    cm = ConfusionMatrix(2).update(torch.tensor([[[0, 1, 1, 0, 1]]]), target)
    assert torch.equal(cm.mat, torch.tensor([[1, 0], [0, 1]]))
    with pytest.raises(ValueError): ConfusionMatrix(2).update(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 1]]]))

def naive_matrix(pred, target, n):
    m = torch.zeros(n, n, dtype=torch.int64)
    for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
        if 0 <= t < n: m[t, p] += 1
    return m

def test_matches_naive_loop_and_accumulates():
    g = torch.Generator().manual_seed(0)
    cm = ConfusionMatrix(5)
    ref = torch.zeros(5, 5, dtype=torch.int64)
    for _ in range(3):
        pred, target = torch.randint(0, 5, (2, 6, 7), generator=g), torch.randint(0, 6, (2, 6, 7), generator=g)
        target[target == 5] = 255
        cm.update(pred, target); ref += naive_matrix(pred, target, 5)
    assert torch.equal(cm.mat, ref)
    h = ref.double()
    iou = [h[c, c] / (h[c].sum() + h[:, c].sum() - h[c, c]) for c in range(5)]
    assert math.isclose(cm.miou(), float(sum(iou) / 5), rel_tol=1e-12)
    assert math.isclose(cm.pixel_accuracy(), float(h.diag().sum() / h.sum()), rel_tol=1e-12)
    cm.reset()
    assert cm.mat.sum() == 0 and math.isnan(cm.pixel_accuracy()) and math.isnan(cm.miou())

def test_logits_are_upsampled_before_argmax():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(2, 3, 4, 5, generator=g), torch.randint(0, 3, (2, 8, 9), generator=g)
    up = F.interpolate(logits, size=(8, 9), mode='bilinear', align_corners=True).argmax(1)
    assert torch.equal(to_labels(logits, (8, 9)), up)
    assert torch.equal(ConfusionMatrix(3).update(logits, target).mat, naive_matrix(up, target, 3))
    assert torch.equal(confusion_matrix(logits, target, 3), naive_matrix(up, target, 3))

def test_merge_by_summing_matrices():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randint(0, 4, (4, 5, 5), generator=g), torch.randint(0, 4, (4, 5, 5), generator=g)
    a, b = ConfusionMatrix(4).update(pred[:2], target[:2]), ConfusionMatrix(4).update(pred[2:], target[2:])
    assert torch.equal(a.mat + b.mat, ConfusionMatrix(4).update(pred, target).mat)
    assert torch.equal(a.all_reduce_().mat, confusion_matrix(pred[:2], target[:2], 4))   # no process group: no-op
    assert torch.allclose(iou_from_matrix(a.mat + b.mat), ConfusionMatrix(4).update(pred, target).iou(), equal_nan=True)

def _ddp_worker(rank, world, path, out):
    dist.init_process_group('gloo', init_method=f'file://{path}', rank=rank, world_size=world)
    g = torch.Generator().manual_seed(10)
    pred, target = torch.randint(0, 3, (2, 4, 4), generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    cm = ConfusionMatrix(3).update(pred[rank:rank+1], target[rank:rank+1]).all_reduce_()
    err = torch.rand(2, 4, 4, generator=g) > 0.5
    el = ErrorLocalizationMeter().update(err[rank:rank+1], pred[rank:rank+1], target[rank:rank+1]).all_reduce_()
    if rank == 0: torch.save({'mat': cm.mat, 'el': el.compute()}, out)
    dist.destroy_process_group()

def test_all_reduce_across_two_gloo_ranks():
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, 'out.pt')
        mp.spawn(_ddp_worker, args=(2, os.path.join(d, 'init'), out), nprocs=2, join=True)
        res = torch.load(out)
    g = torch.Generator().manual_seed(10)
    pred, target = torch.randint(0, 3, (2, 4, 4), generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    err = torch.rand(2, 4, 4, generator=g) > 0.5
    assert torch.equal(res['mat'], confusion_matrix(pred, target, 3))
    ref = error_localization_scores(err, pred, target)
    assert all(math.isclose(res['el'][k], ref[k], rel_tol=1e-12) for k in ref)

# ---------------------------------------------------------------- error localization
KEYS = ['precision', 'recall', 'f1', 'precision_total', 'recall_total', 'f1_total']

def test_error_localization_by_hand():
    target = torch.tensor([[[0, 1], [1, 255]], [[2, 2], [0, 0]]])
    pred = torch.tensor([[[0, 0], [0, 0]], [[2, 2], [0, 0]]])
    err = torch.tensor([[[1, 1], [0, 1]], [[0, 0], [0, 0]]])          # 0/1 ints accepted
    assert torch.equal(error_counts(err, pred, target), torch.tensor([[1, 1, 1, 3], [0, 0, 0, 4]]))
    s = error_localization_scores(err, pred, target)
    assert set(s) == set(KEYS)
    assert [round(s[k], 12) for k in KEYS] == [0.75, 0.75, 0.75, 0.5, 0.5, 0.5]

def test_zero_over_zero_conventions():
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    right, wrong = torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long)
    none, some = torch.zeros(1, 2, 2, dtype=torch.bool), torch.tensor([[[True, False], [False, False]]])
    s = error_localization_scores(none, right, target)           # nothing to find, nothing claimed: perfect
    assert all(s[k] == 1 for k in KEYS)
    s = error_localization_scores(none, wrong, target)           # errors missed, nothing claimed: precision 0
    assert all(s[k] == 0 for k in KEYS)
    s = error_localization_scores(some, right, target)           # false alarm where there is no error: recall 0
    assert all(s[k] == 0 for k in KEYS)
    s = error_localization_scores(some, wrong, target)
    assert math.isclose(s['precision'], 1) and math.isclose(s['recall'], 1/4) and math.isclose(s['f1'], 2/5)
    s = error_localization_scores(some, wrong, torch.full((1, 2, 2), 255))   # no labelled pixel: no image, nan
    assert all(math.isnan(s[k]) for k in KEYS)

def naive_scores(err, pred, target, ignore_index=255):
    "Per-pixel loops, convention: 0/0 -> 1 if the image has no true and no predicted error, else 0."
    def prf(tp, fp, fn):
        div = lambda a, b: a / b if b else float(tp + fp + fn == 0)
        return div(tp, tp + fp), div(tp, tp + fn), div(2 * tp, 2 * tp + fp + fn)
    per, tot = [], [0, 0, 0]
    for b in range(target.shape[0]):
        tp = fp = fn = n = 0
        for e, p, t in zip(err[b].flatten().tolist(), pred[b].flatten().tolist(), target[b].flatten().tolist()):
            if t == ignore_index: continue
            n += 1; wrong = p != t
            tp += bool(e) and wrong; fp += bool(e) and not wrong; fn += (not e) and wrong
        if n: per.append(prf(tp, fp, fn)); tot = [tot[0] + tp, tot[1] + fp, tot[2] + fn]
    avg = [sum(x[i] for x in per) / len(per) for i in range(3)]
    return dict(zip(KEYS, avg + list(prf(*tot))))

def test_error_localization_matches_naive_loop_and_meter_pools():
    g = torch.Generator().manual_seed(3)
    err, pred = torch.rand(6, 5, 6, generator=g) > 0.6, torch.randint(0, 3, (6, 5, 6), generator=g)
    target = torch.randint(0, 3, (6, 5, 6), generator=g)
    target[0] = 255; target[1, :3] = 255
    pred[2] = target[2]; err[2] = False                              # a perfect image with a silent ELN
    ref, got = naive_scores(err, pred, target), error_localization_scores(err, pred, target)
    assert all(math.isclose(got[k], ref[k], rel_tol=1e-12) for k in KEYS)
    m = ErrorLocalizationMeter()
    for i in range(0, 6, 2): m.update(err[i:i+2], pred[i:i+2], target[i:i+2])
    assert all(math.isclose(m.compute()[k], ref[k], rel_tol=1e-12) for k in KEYS)
    assert m.reset().stats.sum() == 0

def test_error_localization_logits_and_low_res_mask():
    g = torch.Generator().manual_seed(4)
    logits, target = torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 8, 8), generator=g)
    err_small = torch.rand(2, 4, 4, generator=g) > 0.5
    err = err_small.repeat_interleave(2, 1).repeat_interleave(2, 2)  # nearest upsampling by 2
    pred = F.interpolate(logits, size=(8, 8), mode='bilinear', align_corners=True).argmax(1)
    assert error_localization_scores(err_small, logits, target) == error_localization_scores(err, pred, target)
