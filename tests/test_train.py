"The run loop in-process: a tiny run end to end, reports and files, non-finite losses, corrupt checkpoints."
import json, math
from pathlib import Path
import pytest, torch
import eln_nb.stage1
from eln_nb.train import (TrainConfig, PRESETS, make_config, train, Trainer, Schedule, load_checkpoint, load_checkpoint_models,
                          CheckpointError, NonFiniteLossError, save_checkpoint, config_from_dict)
from helpers import tiny_config

REPORT_KEYS = {'student_miou', 'teacher_miou', 'per_class_iou', 'eln_precision', 'eln_recall', 'eln_f1', 'wall_time_s', 'peak_memory_mb'}

@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    "One tiny finished run (6 iterations: 2 per phase), shared by the tests below."
    out = tmp_path_factory.mktemp('run')
    rep = train(tiny_config(out, eval_every=4, keep_every=4))
    return out, rep

def test_presets_resolve():
    for name in PRESETS: assert isinstance(make_config(name), TrainConfig)
    v = make_config('voc-r50')
    assert (v.batch_size, v.unlabelled_batch_size, v.lr, v.backbone_lr, v.weight_decay) == (6, 6, 1e-4, 1e-5, 1e-5)
    assert (v.iters_per_epoch, v.pre_epochs, v.eln_epochs, v.epochs, v.resize, v.val_resize) == (266, 70, 50, 500, (505,), (505,))
    c = make_config('cityscapes-r50')
    assert (c.crop, c.batch_size, c.pre_epochs, c.eln_epochs) == ((512, 1024), 4, 100, 58)
    assert make_config('voc-r101').backbone == 'resnet101'

def test_report_and_files(finished):
    out, rep = finished
    assert REPORT_KEYS <= set(rep) and rep['iterations'] == 6
    assert json.loads((out/'report.json').read_text())['iterations'] == 6
    for f in ('config.json', 'metrics.jsonl', 'last.pt', 'best.pt', 'iter_0000004.pt'): assert (out/f).is_file(), f
    recs = [json.loads(l) for l in (out/'metrics.jsonl').read_text().splitlines()]
    assert {r['phase'] for r in recs if r['kind'] == 'train'} == {'1a', '1b', '2'}
    assert any(r['kind'] == 'val' for r in recs)
    assert all(0 <= v <= 1 for v in rep['per_class_iou'].values() if not math.isnan(v))
    assert set(rep['phases']) == {'1a', '1b', '2'}

def test_checkpoint_contents(finished):
    out, _ = finished
    ck = torch.load(out/'last.pt', weights_only=True)          # loads without unpickling code
    assert ck['iteration'] == 6 and config_from_dict(ck['config']).synthetic_size == 32
    assert {'torch', 'numpy', 'python', 'generator'} <= set(ck['rng'][0])
    assert any(k.startswith('teacher.') for k in ck['models']) and any(k.startswith('eln.') for k in ck['models'])
    assert any(k.startswith('aux.') for k in ck['models']) and ck['optimizer']['state']
    m, cfg, info = load_checkpoint_models(out/'last.pt')
    assert cfg.synthetic_size == 32 and info.num_classes == 5 and not m.training

def test_finished_run_resumes_to_report(finished):
    "Starting a finished run again loads last.pt, trains nothing and rewrites the report."
    out, rep = finished
    rep2 = train(tiny_config(out))
    assert rep2['iterations'] == 6 and rep2['resumed_from'].endswith('last.pt')
    assert rep2['student_miou'] == pytest.approx(rep['student_miou'])

def test_corrupt_checkpoint(tmp_path, finished):
    out, _ = finished
    run = tmp_path/'run'; run.mkdir()
    good = (out/'last.pt').read_bytes()
    (run/'last.prev.pt').write_bytes(good)
    (run/'last.pt').write_bytes(good[:len(good) // 3])           # truncated, as by a crash of a non-atomic writer
    with pytest.raises(CheckpointError, match=r'last\.pt: truncated or corrupt.*last\.prev\.pt'):
        Trainer(tiny_config(run))
    assert (run/'last.prev.pt').read_bytes() == good             # the previous good checkpoint is untouched
    assert load_checkpoint(run/'last.prev.pt')['iteration'] == 6
    (run/'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match='junk.pt'): Trainer(tiny_config(tmp_path/'other'), resume=run/'junk.pt')

def test_save_is_atomic(tmp_path):
    "A failing write leaves the old file in place and no temporary file behind."
    p = tmp_path/'last.pt'
    save_checkpoint({'models': {}, 'x': torch.ones(1)}, p)
    class Bad:
        def __reduce__(self): raise RuntimeError('boom')
    with pytest.raises(RuntimeError, match='boom'): save_checkpoint({'models': {}, 'x': Bad()}, p)
    assert torch.equal(load_checkpoint(p)['x'], torch.ones(1))

def test_non_finite_loss(tmp_path, monkeypatch):
    "A NaN loss stops the run with the term and iteration; the last good checkpoint stays."
    orig = eln_nb.stage1.phase1b_step
    def nan_eln(m, lab, cfg):
        loss, logs = orig(m, lab, cfg)
        return loss * float('nan'), {**logs, 'eln': logs['eln'] * float('nan')}
    monkeypatch.setattr(eln_nb.stage1, 'phase1b_step', nan_eln)
    cfg = tiny_config(tmp_path, ckpt_every=1)
    with pytest.raises(NonFiniteLossError, match=r"iteration 2 \(phase 1b\): term 'eln'.*last good checkpoint"):
        train(cfg)
    ck = load_checkpoint(tmp_path/'last.pt')
    assert ck['iteration'] == 2 and all(torch.isfinite(v).all() for v in ck['models'].values() if v.is_floating_point())
