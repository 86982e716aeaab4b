"""Issue 16, trust at the edges: a folder of one's own data from the command line, bad files found before training,
option errors at parse time, unsafe checkpoints named, whole-run reports over resumes, lean checkpoints,
evaluation at the run's own size, and a warning when stage 2 lowered the validation score."""
import json, re, shlex, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eln_nb.cli import train_main, eval_main, parse_config, config_parser
from eln_nb.data import FolderDataset, SyntheticScenes, DatasetError, check_files, folder_split
from eln_nb.train import (Trainer, train, make_config, load_checkpoint, load_checkpoint_models, CheckpointError,
                          summary_table, best_lines, config_errors, PRESETS)
from helpers import tiny_config, tiny_args, assert_same_weights, subprocess_env

README = Path(__file__).resolve().parents[1]/'README.md'
CLASSES = [{'id': 0, 'name': 'background', 'color': [0, 0, 0]}, {'id': 1, 'name': 'thing', 'color': [200, 0, 0]},
           {'id': 2, 'name': 'stuff', 'color': [0, 200, 0]}, {'id': 255, 'name': 'void', 'color': [255, 255, 255]}]


def make_folder(root, n_train=8, n_unlabelled=4, n_val=4, size=32):
    "ROOT/images/{train,val}, ROOT/labels/{train,val}, ROOT/classes.json (3 classes + an id-255 entry) from synthetic scenes."
    root = Path(root)
    for split, n, seed in (('train', n_train + n_unlabelled, 0), ('val', n_val, 1)):
        ds = SyntheticScenes(n=n, size=size, num_classes=3, seed=seed)
        (root/'images'/split).mkdir(parents=True); (root/'labels'/split).mkdir(parents=True)
        for i in range(n):
            s = ds[i]
            Image.fromarray(s['image'].permute(1, 2, 0).numpy()).save(root/'images'/split/f'{split}{i:02d}.png')
            if split == 'val' or i < n_train: Image.fromarray(s['label'].numpy().astype(np.uint8)).save(root/'labels'/split/f'{split}{i:02d}.png')
    (root/'classes.json').write_text(json.dumps(CLASSES))
    return root

def readme_folder_command():
    "The folder command exactly as the README shows it."
    cmd = [l.strip() for l in README.read_text().splitlines() if l.strip().startswith('eln_nb_train') and '--dataset folder' in l]
    assert cmd, 'README shows no eln_nb_train --dataset folder command'
    return shlex.split(cmd[0])[1:]

TINY = ['--resize', '32', '--crop', '32', '--scale', '--val-resize', '32', '--window-size', '4', '--windows', '2',
        '--iters-per-epoch', '2', '--pre-epochs', '1', '--eln-epochs', '1', '--epochs', '3', '--batch-size', '2',
        '--unlabelled-batch-size', '2', '--eval-batch-size', '2', '--amp', 'off', '--threads', '1', '--num-workers', '0',
        '--no-progress', '--deterministic', '--split', '2']


# ---------------------------------------------------------------- 1, 2: the folder dataset from the command line
def test_readme_folder_command_end_to_end(tmp_path, capsys):
    "The README's folder command, with ROOT filled in and tiny sizes, trains all three phases and evaluates."
    root = make_folder(tmp_path/'photos')
    args = [a.replace('ROOT', str(root)) for a in readme_folder_command()]
    args = [a if a != 'runs/mine' else str(tmp_path/'run') for a in args] + TINY
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert 'checked the files of 16 images' in out                           # 8 labelled-capable + 4 unlabelled + 4 val
    rep = json.loads((tmp_path/'run'/'report.json').read_text())
    assert rep['classes'] == ['background', 'thing', 'stuff']                 # id 255 is not a class
    assert set(rep['phases']) == {'1a', '1b', '2'} and rep['iterations'] == 6
    m, cfg, info = load_checkpoint_models(tmp_path/'run'/'last.pt')
    assert cfg.dataset == 'folder' and info.num_classes == 3
    assert eval_main(['--ckpt', str(tmp_path/'run'/'last.pt')]) == 0
    assert f"student mIoU {rep['student_miou']:.4f}" in capsys.readouterr().out

def test_folder_split_pools(tmp_path):
    "Images without labels are unlabelled; --split N draws 1/N of the labelled-capable ones; val is its own folder."
    from eln_nb.train import build_data
    root = make_folder(tmp_path/'f')
    d = build_data(make_config('demo', dataset='folder', data_root=str(root), classes=str(root/'classes.json'), split=2, val_split='val'))
    assert (len(d.labelled), len(d.unlabelled), len(d.val), d.info.num_classes) == (4, 8, 4, 3)
    lab_names = {d.labelled.dataset.names[i] for i in d.labelled.indices}
    assert all(d.labelled.dataset.labels[d.labelled.dataset.names.index(n)] is not None for n in lab_names)

def test_folder_mistakes_are_errors(tmp_path, capsys):
    "The issue's command (image folder as root, no class list) and a validation set equal to the training set fail clearly."
    root = make_folder(tmp_path/'photos')
    with pytest.raises(SystemExit):
        parse_config(['--dataset', 'folder', '--data-root', str(root/'images'/'train'), '--split', '4', '--dry-run'])
    assert 'argument --classes' in capsys.readouterr().err
    cfg = make_config('demo', dataset='folder', data_root=str(root), classes=str(root/'classes.json'), image_dir='images/train',
                      label_dir='labels/train', val_split='val')
    with pytest.raises(DatasetError, match='validation images are training images'): Trainer(cfg)

def test_class_list_ignore_entry(tmp_path):
    root = make_folder(tmp_path/'f')
    ds = FolderDataset(root/'images'/'val', root/'labels'/'val', classes=root/'classes.json')
    assert ds.info.num_classes == 3 and ds.info.classes == ['background', 'thing', 'stuff']
    assert ds.info.palette == [(0, 0, 0), (200, 0, 0), (0, 200, 0)]


# ---------------------------------------------------------------- 3, 4: every file checked before the first step
def _break(root, what):
    "Spoil one file of the training pool the way the issue did; returns the bad file's name."
    if what == 'truncated jpeg':                                   # an unlabelled-only image
        p = root/'images'/'train'/'train11.png'; p.unlink(); p = p.with_suffix('.jpg')
        Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(p, quality=95)
        b = p.read_bytes(); p.write_bytes(b[:len(b) // 2]); return p.name
    p = root/'labels'/'train'/'train07.png'
    if what == 'value 7': Image.fromarray(np.full((32, 32), 7, np.uint8)).save(p)
    if what == 'unknown colours': Image.fromarray(np.full((32, 32, 3), (10, 20, 30), np.uint8)).save(p)
    if what == 'rgb class ids': Image.fromarray(np.stack([np.full((32, 32), 2, np.uint8)] * 3, -1)).save(p)
    return p.name

@pytest.mark.parametrize('what, problem', [('truncated jpeg', 'unreadable or truncated image'),
                                           ('value 7', r'label values outside \[0,3\) and 255 \(ignore\): \[7\]'),
                                           ('unknown colours', 'colours that are not in the palette'),
                                           ('rgb class ids', 'save it single-channel')])
def test_bad_file_stops_before_training(tmp_path, capsys, what, problem):
    root = make_folder(tmp_path/'photos')
    name = _break(root, what)
    args = ['--dataset', 'folder', '--data-root', str(root), '--classes', str(root/'classes.json'), '--val-split', 'val',
            '--out', str(tmp_path/'run'), *TINY]
    t = time.time()
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('eln_nb_train: error: ') and name in err and re.search(problem, err), err
    assert not (tmp_path/'run'/'last.pt').exists() and not (tmp_path/'run'/'metrics.jsonl').exists()   # nothing trained
    assert time.time() - t < 60
    assert train_main(args + ['--dry-run']) == 2                   # --dry-run finds it too

def test_header_check_is_cheaper_and_says_what_it_misses(tmp_path):
    root = make_folder(tmp_path/'f')
    _break(root, 'value 7')
    ds = folder_split(root, 'train', root/'classes.json')
    assert check_files(ds, 'header') == [] and len(check_files(ds, 'full')) == 1


# ---------------------------------------------------------------- 5: options checked where they are parsed
@pytest.mark.parametrize('argv, msg', [(['--lr', '-1'], 'argument --lr: must be > 0, got -1.0'),
                                       (['--backbone-lr', '0'], 'argument --backbone-lr: must be > 0'),
                                       (['--split', '0'], 'argument --split: must be >= 1, got 0'),
                                       (['--batch-size', '0'], 'argument --batch-size: must be >= 1, got 0'),
                                       (['--unlabelled-batch-size', '0'], 'argument --unlabelled-batch-size: must be >= 1'),
                                       (['--preset', 'camvid', '--eln-threshold', '1.5'], 'argument --eln-threshold'),
                                       (['--crop', '0'], 'argument --crop'), (['--alphas', '3'], 'argument --alphas')])
def test_bad_option_values(argv, msg, capsys):
    with pytest.raises(SystemExit) as e: parse_config(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'usage: eln_nb_train' in err and msg in err, err

def test_bad_option_console_script():
    r = subprocess.run([sys.executable, '-m', 'eln_nb.cli', '--lr', '-1'], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 2 and 'eln_nb_train: error: argument --lr: must be > 0' in r.stderr and 'Traceback' not in r.stderr

def test_train_refuses_bad_config(tmp_path):
    with pytest.raises(ValueError, match='lr: must be > 0'): train(tiny_config(tmp_path, lr=-1.0))

def test_help_shows_the_presets_values():
    for preset in PRESETS:
        h = ' '.join(config_parser(preset=preset).format_help().split())
        c = make_config(preset)
        assert f"dataset split to validate on (default {c.val_split!r})" in h, preset
        assert f"AdamW learning rate of decoders, heads and the ELN head (default {c.lr!r})" in h, preset
    r = subprocess.run([sys.executable, '-m', 'eln_nb.cli', '--preset', 'camvid', '--help'], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120)
    assert "(default 'test')" in ' '.join(r.stdout.split()) and 'preset camvid' in r.stdout


# ---------------------------------------------------------------- 6: a checkpoint that holds code
class _Code:
    def __reduce__(self): return (print, ('this ran while loading a checkpoint',))

def test_unsafe_checkpoint_is_named_unsafe(tmp_path, capsys):
    p = tmp_path/'last.pt'
    torch.save({'models': {}, 'payload': _Code()}, p)
    with pytest.raises(CheckpointError) as e: load_checkpoint(p)
    msg = str(e.value)
    assert 'contains code, not only tensors' in msg and 'would call print' in msg
    assert 'weights_only' not in msg and 'corrupt' not in msg and '\n' not in msg
    assert eval_main(['--ckpt', str(p)]) == 2
    r = capsys.readouterr()
    assert 'contains code, not only tensors' in r.err and 'weights_only' not in r.err and 'this ran' not in r.out
    with pytest.raises(CheckpointError, match='contains code'): Trainer(tiny_config(tmp_path))   # auto-resume refuses it too


# ---------------------------------------------------------------- 7: the whole run in one report, after any number of resumes
class _Kill(Exception): pass

def _run_killed_at(cfg, stops, monkeypatch):
    "Run `cfg`, interrupting it at the start of each iteration in `stops` (like a kill), then resuming; returns the report."
    orig = Trainer.train_step
    for stop in stops:
        def step(self, phase, _stop=stop):
            if self.it == _stop: raise _Kill
            return orig(self, phase)
        monkeypatch.setattr(Trainer, 'train_step', step)
        with pytest.raises(_Kill): train(cfg)
    monkeypatch.setattr(Trainer, 'train_step', orig)
    return train(cfg)

def test_report_covers_every_resume(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path/'run', ckpt_every=2, log_every=1, eval_every=3)
    t = time.time()
    rep = _run_killed_at(cfg, [1, 3, 5], monkeypatch)            # killed three times: in 1a, in 1b and in stage 2
    assert rep['sessions'] == 3                                  # the first session died before its first checkpoint
    assert {k: v['iters'] for k, v in rep['phases'].items()} == {'1a': 2, '1b': 2, '2': 2}
    assert 0 < rep['wall_time_s'] <= time.time() - t + 1
    assert sum(v['time_s'] for v in rep['phases'].values()) <= rep['wall_time_s']
    assert json.loads((tmp_path/'run'/'report.json').read_text())['phases'] == rep['phases']
    table = summary_table(rep)
    for ph in ('1a', '1b', '2'): assert re.search(rf'^{ph}\s+2\s', table, re.M), table
    recs = [json.loads(l) for l in (tmp_path/'run'/'metrics.jsonl').read_text().splitlines()]
    train_its = [r['iter'] for r in recs if r['kind'] == 'train']
    assert train_its == [1, 2, 3, 4, 5, 6]                       # each iteration once, in order
    val_its = [r['iter'] for r in recs if r['kind'] == 'val']
    assert len(val_its) == len(set(val_its)) and 4 in val_its and 6 in val_its
    rep2 = train(cfg)                                            # a finished run started again: same run, one more session
    assert rep2['phases'] == rep['phases'] and rep2['sessions'] == 4
    assert [json.loads(l) for l in (tmp_path/'run'/'metrics.jsonl').read_text().splitlines()] == recs


# ---------------------------------------------------------------- 8: checkpoints hold what resume needs and no more
def test_resume_from_lean_checkpoints_is_exact(tmp_path, monkeypatch):
    "last.pt in phase 1a has no teacher, aux or ELN, and in 1b no teacher; resuming from either is bit for bit."
    kw = dict(ckpt_every=1, log_every=1)
    ref = train(tiny_config(tmp_path/'ref', **kw))
    seen = {}
    orig = Trainer.checkpoint
    def spy(self):
        orig(self); ck = torch.load(self.out/'last.pt', weights_only=True)
        seen[self.it] = {p for p in ('student', 'teacher', 'aux', 'eln') if any(k.startswith(p + '.') for k in ck['models'])}
    monkeypatch.setattr(Trainer, 'checkpoint', spy)
    _run_killed_at(tiny_config(tmp_path/'run', **kw), [1, 3], monkeypatch)
    assert seen[1] == {'student'} and seen[3] == {'student', 'aux', 'eln'} and seen[6] == {'student', 'teacher', 'aux', 'eln'}
    a, b = load_checkpoint(tmp_path/'ref'/'last.pt'), load_checkpoint(tmp_path/'run'/'last.pt')
    assert_same_weights(a['models'], b['models'])
    assert_same_weights(a['optimizer']['state'][0], b['optimizer']['state'][0])

def test_cpu_presets_keep_few_small_files(tmp_path):
    for p in ('demo', 'camvid'):
        c = make_config(p)
        assert not c.keep_prev and c.keep_every == 0
        assert 0 < c.ckpt_every <= c.iters_per_epoch                 # at least once an epoch (demo: ~10 s of work)
    out = tmp_path/'run'
    train(tiny_config(out, eval_every=2))
    assert sorted(p.name for p in out.glob('*.pt')) == ['best.pt', 'last.pt']        # no last.prev.pt
    best, last = torch.load(out/'best.pt', weights_only=True), torch.load(out/'last.pt', weights_only=True)
    assert 'optimizer' not in best and 'rng' not in best and not any(k.startswith('aux.') for k in best['models'])
    assert (out/'best.pt').stat().st_size < 0.5 * (out/'last.pt').stat().st_size
    with pytest.raises(CheckpointError, match='evaluation only'): Trainer(tiny_config(tmp_path/'x'), resume=out/'best.pt')
    m, cfg, info = load_checkpoint_models(out/'best.pt')            # evaluation loads it
    assert info.num_classes == 5
    rep = train(tiny_config(tmp_path/'y', epochs=2))                 # no stage 2: validated once, after the last checkpoint
    assert rep['best_iteration'] == 4 and (tmp_path/'y'/'best.pt').samefile(tmp_path/'y'/'last.pt')   # a hard link, no extra disk


# ---------------------------------------------------------------- 9: eln_nb_eval at the run's own size
def test_eval_defaults_to_the_runs_val_resize(tmp_path, capsys):
    out = tmp_path/'run'
    rep = train(tiny_config(out, val_resize=(24,), synthetic_size=40, crop=(32,)))
    capsys.readouterr()
    res = tmp_path/'e.json'
    assert eval_main(['--ckpt', str(out/'last.pt'), '--json', str(res)]) == 0
    r = json.loads(res.read_text())['results']
    assert list(r) == ['resize'] and r['resize']['student_miou'] == pytest.approx(rep['student_miou'], abs=1e-9)
    assert eval_main(['--ckpt', str(out/'last.pt'), '--mode', 'full', '--json', str(res)]) == 0
    assert 'the run validated at size 24; other modes or sizes score differently' in capsys.readouterr().out


# ---------------------------------------------------------------- 10: best and final validation score, warning when stage 2 lowered it
def test_summary_warns_when_stage2_lowered_the_score():
    rep = {'student_miou': 0.440, 'best_student_miou': 0.565, 'best_iteration': 32, 'stage1_student_miou': 0.565,
           'stage1_iteration': 32, 'iterations': 48, 'best_metric': 'student_miou'}
    L = best_lines(rep)
    assert L[0] == 'validation student_miou: final 0.440 (iteration 48), best 0.565 (iteration 32, in best.pt)'
    assert L[1].startswith('WARNING: stage 2 lowered student_miou from 0.565 (end of stage 1, iteration 32) to 0.440')
    assert len(best_lines({**rep, 'student_miou': 0.6, 'best_student_miou': 0.6, 'best_iteration': 48})) == 1

def test_report_has_stage1_best_and_final(tmp_path):
    rep = train(tiny_config(tmp_path))                             # eval_every=0: validated at the end of stage 1 and at the end
    assert rep['stage1_iteration'] == 4 and np.isfinite(rep['stage1_student_miou'])
    assert rep['best_iteration'] in (4, 6) and rep['best_student_miou'] == max(rep['stage1_student_miou'], rep['student_miou'])
    assert 'validation student_miou: final' in summary_table(rep)
    vals = [json.loads(l)['iter'] for l in (tmp_path/'metrics.jsonl').read_text().splitlines() if '"val"' in l]
    assert vals == [4, 6]

def test_worker_traceback_reduced_to_one_line():
    "A file that goes bad during training still ends the command with one line, not a loader worker's traceback."
    from eln_nb.cli import _one_line
    e = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                     '  File "x.py", line 1, in <module>\neln_nb.data.DatasetError: a/b.png: label values outside [0,3) and 255')
    assert _one_line(e) == 'a/b.png: label values outside [0,3) and 255'
    assert _one_line(DatasetError('c.png: label file not found')) == 'c.png: label file not found'
