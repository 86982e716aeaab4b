#!/usr/bin/env python
"""The paired CamVid semi-supervised benchmark (issue 13) from one resumable command.

For every split seed, stage 1 (phase 1a, then 1b with the auxiliary decoders and the ELN) is trained ONCE; every
stage-2 filter is then a branch of that one checkpoint (`eln_nb_train --init-from`), so the filters are compared on the
same stage-1 networks, seed by seed:

    stage1_s{seed}          1a + 1b, filter eln                   -> last.pt (end of 1b), iter_<1a end>.pt (end of 1a)
    supervised_s{seed}      from last.pt: stage 2 on labelled images only (the control)
    none / threshold / eln  from last.pt: stage 2 with that filter
    eln_cal_s{seed}         from last.pt: the eln filter with a keep threshold calibrated on the validation images
    ecn_s{seed}             from the end-of-1a checkpoint: its own 1b (its head differs), then stage 2

Then the final teacher of each eln branch is scored at finding its own errors on the UNLABELLED training images (the
paper's Table 4): the ELN in the BatchNorm mode stage 2 filters with and in eval mode, against confidence and entropy.

    python tools/camvid_benchmark.py --out runs/camvid_paired --json nbs/results/camvid_benchmark.json

Resumable: a job whose output exists (report.json, calibration.json, analysis.json) is not run again; a run killed half
way resumes from its own last.pt. `--aggregate-only` rebuilds the JSON from the run folders.
On your own data: `--data-root DIR --dataset folder --classes classes.json` (and `--image-dir/--label-dir/--split-list`
through `--extra`), with `--test-split` and `--calib-split` naming the splits to test and calibrate on.
"""
import argparse, json, math, os, shutil, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor, FIRST_COMPLETED, wait
from datetime import datetime, timezone
from pathlib import Path

BRANCHES = ('supervised', 'none', 'threshold', 'eln', 'eln_cal', 'ecn')
FILTER = {'eln_cal': 'eln'}
PAIRS = [('eln', 'threshold'), ('eln', 'none'), ('eln', 'supervised'), ('eln_cal', 'eln'), ('eln_cal', 'threshold'),
         ('threshold', 'none'), ('threshold', 'supervised'), ('none', 'supervised'), ('ecn', 'eln'), ('ecn', 'supervised')]                         # branch name -> eln_nb_train --filter
COST = {'stage1': 10, 'calibrate': 9.5, 'ecn': 9, 'eln': 6, 'eln_cal': 6, 'threshold': 4, 'none': 4, 'supervised': 1,
        'analyse': 0.5}   # start the longest ready job first; calibrate (half a minute) early, since a long eln_cal waits on it
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent/'shared'/'data'/'camvid'


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    A = lambda *k, **kw: p.add_argument(*k, **kw, help=kw.pop('help', '') + ' (default: %(default)s)')
    p.add_argument('--out', default='runs/camvid_paired', help='folder of the runs (one sub-folder per job) (default: %(default)s)')
    p.add_argument('--json', default='nbs/results/camvid_benchmark.json', help='results file (default: %(default)s)')
    p.add_argument('--methods', nargs='+', default=list(BRANCHES), choices=BRANCHES, help='stage-2 branches to train (default: all)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2], help='split seeds, also the training seeds (default: 0 1 2)')
    p.add_argument('--jobs', type=int, default=2, help='processes at once (default: 2)')
    p.add_argument('--threads', type=int, default=1, help='torch/OpenMP threads per process (default: 1)')
    p.add_argument('--data-root', default=str(DEFAULT_DATA), help='dataset folder (default: ../shared/data/camvid)')
    p.add_argument('--dataset', default='camvid', help='camvid or folder (default: camvid)')
    p.add_argument('--classes', default='', help='folder datasets: the class list file (see eln_nb_train --help)')
    p.add_argument('--test-split', default='test', help='split the students are tested on (default: test)')
    p.add_argument('--calib-split', default='val', help='split the eln_cal threshold is fixed on; never the test split (default: val)')
    g = p.add_argument_group('scale (the same for every branch)')
    g.add_argument('--split', type=int, default=8, help='1/N of the training images are labelled (default: 8)')
    g.add_argument('--iters-per-epoch', type=int, default=40, help='(default: 40)')
    g.add_argument('--pre-epochs', type=int, default=6, help='phase 1a epochs (default: 6)')
    g.add_argument('--eln-epochs', type=int, default=4, help='phase 1b epochs; 4 of 10 stage-1 epochs, the paper has 50 of 120 (default: 4)')
    g.add_argument('--stage2-epochs', type=int, default=2, help='stage-2 epochs of every branch (default: 2)')
    g.add_argument('--alphas', nargs='+', type=float, default=[1.25, 2.5],
                   help='alpha_k of the auxiliary decoders (default: 1.25 2.5; see nbs/13_camvid_benchmark.ipynb for why)')
    g.add_argument('--cal-target', type=float, default=0.9,
                   help='eln_cal keeps the pixels whose ELN keep probability is high enough that, on the calibration '
                        'images, the kept pseudo labels are this accurate (default: 0.9)')
    g.add_argument('--resize', nargs=2, type=int, default=[120, 160], help='images resized to H W (default: 120 160)')
    g.add_argument('--crop', type=int, default=112, help='training crop side (default: 112)')
    g.add_argument('--batch-size', type=int, default=4, help='labelled and unlabelled images per step, each (default: 4)')
    g.add_argument('--backbone', default='resnet18', help='segmentation and ELN encoder (default: resnet18)')
    g.add_argument('--amp', default='off', help='off or bf16 (default: off)')
    g.add_argument('--channels-last', action='store_true', help='channels_last memory format')
    g.add_argument('--test-limit', type=int, default=0, help='test on the first N test images only (0 = all)')
    g.add_argument('--analysis-limit', type=int, default=0, help='score error localization on N unlabelled images (0 = all)')
    g.add_argument('--extra', nargs=argparse.REMAINDER, default=[], help='further eln_nb_train options, passed to every run')
    p.add_argument('--keep-checkpoints', action='store_true', help="keep the branches' last.pt (default: deleted once scored)")
    p.add_argument('--aggregate-only', action='store_true', help='do not train or analyse; rebuild the JSON from the runs')
    p.add_argument('--analysis-run', default=None, help=argparse.SUPPRESS)      # internal: score one run folder
    p.add_argument('--calibrate-run', default=None, help=argparse.SUPPRESS)     # internal: calibrate on one stage-1 folder
    p.add_argument('--figure', default=None, help=argparse.SUPPRESS)            # internal: where analysis saves its example
    return p


# ---------------------------------------------------------------- the jobs
def n1a(a): return a.pre_epochs * a.iters_per_epoch

def common_args(a, out):
    "eln_nb_train options every run shares."
    args = ['--preset', 'camvid', '--dataset', a.dataset, '--split', str(a.split), '--data-root', a.data_root,
            '--iters-per-epoch', str(a.iters_per_epoch), '--pre-epochs', str(a.pre_epochs), '--eln-epochs', str(a.eln_epochs),
            '--resize', *map(str, a.resize), '--val-resize', *map(str, a.resize), '--crop', str(a.crop),
            '--batch-size', str(a.batch_size), '--unlabelled-batch-size', str(a.batch_size), '--backbone', a.backbone,
            '--eln-backbone', a.backbone, '--alphas', *map(str, a.alphas), '--val-split', a.test_split,
            '--val-limit', str(a.test_limit), '--amp', a.amp, '--channels-last' if a.channels_last else '--no-channels-last',
            '--eval-every', '0', '--ckpt-every', '40', '--log-every', '5', '--num-workers', '0',
            '--threads', str(a.threads), '--no-progress', '--pretrained', 'none', '--eln-pretrained', 'none', '--out', str(out)]
    return args + (['--classes', a.classes] if a.classes else []) + list(a.extra)


def train_args(a, name, seed, out):
    "The eln_nb_train command line of job `name` ('stage1' or a branch) for `seed`."
    args = common_args(a, out) + ['--split-seed', str(seed), '--seed', str(seed)]
    stage1 = a.pre_epochs + a.eln_epochs
    if name == 'stage1':
        return args + ['--filter', 'eln', '--epochs', str(stage1), '--keep-every', str(n1a(a))]
    s1 = Path(a.out)/f'stage1_s{seed}'
    start = s1/f'iter_{n1a(a):07d}.pt' if name == 'ecn' else s1/'last.pt'
    args += ['--filter', FILTER.get(name, name), '--epochs', str(stage1 + a.stage2_epochs), '--keep-every', '0',
             '--init-from', str(start)]
    if name == 'eln_cal':
        cal = json.loads((s1/'calibration.json').read_text())
        args += ['--eln-threshold', repr(cal['threshold'])]
    return args


def jobs(a):
    "{job name: (kind, seed, branch, dependencies)} of the whole benchmark."
    J = {}
    for s in a.seeds:
        J[f'stage1_s{s}'] = ('train', s, 'stage1', [])
        if 'eln_cal' in a.methods: J[f'calibrate_s{s}'] = ('calibrate', s, None, [f'stage1_s{s}'])
        for b in a.methods:
            J[f'{b}_s{s}'] = ('train', s, b, [f'stage1_s{s}'] + ([f'calibrate_s{s}'] if b == 'eln_cal' else []))
            if b in ('eln', 'eln_cal'): J[f'analyse_{b}_s{s}'] = ('analyse', s, b, [f'{b}_s{s}'])
    return J


def env(a):
    e = dict(os.environ)
    for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'): e[k] = str(a.threads)
    return e


def log(msg): print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def _call(cmd, logfile, a):
    "Run `cmd` with its output appended to `logfile` -> exit status."
    with open(logfile, 'a') as f: return subprocess.call(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, env=env(a))


def run_job(a, name, kind, seed, branch):
    "Run one job unless its output exists; returns an error string or None."
    t = time.time()
    if kind == 'train':
        out = Path(a.out)/f'{branch}_s{seed}'
        if (out/'report.json').is_file(): return None
        out.mkdir(parents=True, exist_ok=True)
        log(f"train {out.name}")
        cmd = [sys.executable, '-m', 'eln_nb.cli', *train_args(a, branch, seed, out)]
        (out/'command.txt').write_text(' '.join(map(str, cmd)) + '\n')
        rc = _call(cmd, out/'train.log', a)
        if rc or not (out/'report.json').is_file(): return f"{out.name}: training exited {rc}; see {out/'train.log'}"
        drop = ('best.pt', 'last.prev.pt') + (('last.pt',) if branch not in ('stage1', 'eln', 'eln_cal') and not a.keep_checkpoints else ())
        for n in drop: (out/n).unlink(missing_ok=True)         # eln branches keep last.pt until they are scored
    elif kind == 'calibrate':
        out = Path(a.out)/f'stage1_s{seed}'
        if (out/'calibration.json').is_file(): return None
        rc = _call([sys.executable, __file__, '--calibrate-run', out, '--threads', a.threads, '--data-root', a.data_root,
                    '--calib-split', a.calib_split, '--cal-target', a.cal_target], out/'calibration.log', a)
        if rc: return f"{name}: calibration exited {rc}; see {out/'calibration.log'}"
    else:
        out = Path(a.out)/f'{branch}_s{seed}'
        if not (out/'analysis.json').is_file():
            rc = _call([sys.executable, __file__, '--analysis-run', out, '--threads', a.threads, '--data-root', a.data_root,
                        '--analysis-limit', a.analysis_limit, '--figure', out/'example.npz'], out/'analysis.log', a)
            if rc: return f"{name}: analysis exited {rc}; see {out/'analysis.log'}"
        if not a.keep_checkpoints: (out/'last.pt').unlink(missing_ok=True)
    log(f"done  {name} in {time.time() - t:.0f} s")


def run_all(a):
    "Every job, `--jobs` at a time, each once its dependencies are done (longest first); returns the failures."
    J, done, failed, running = jobs(a), set(), [], {}
    with ThreadPoolExecutor(max(1, a.jobs)) as ex:
        while len(done) + len(failed) < len(J):
            bad = {n for n in J if n not in done and any(d in [f.split(':')[0] for f in failed] for d in J[n][3])}
            for n in bad - set(running): failed.append(f"{n}: skipped, a job it needs failed"); done.add(n)
            ready = [n for n in J if n not in done and n not in running and all(d in done for d in J[n][3])]
            ready.sort(key=lambda n: -COST[J[n][2] if J[n][0] == 'train' else J[n][0]])
            for n in ready[:max(1, a.jobs) - len(running)]:
                running[n] = ex.submit(run_job, a, n, J[n][0], J[n][1], J[n][2])
            if not running: break
            fin, _ = wait(list(running.values()), return_when=FIRST_COMPLETED)
            for n in [n for n, f in running.items() if f in fin]:
                err = running.pop(n).result()
                if err: failed.append(err); log('FAILED ' + err)
                else: done.add(n)
    return failed


# ---------------------------------------------------------------- error localization (Table 4)
def _ap(score, positive):
    "Average precision of `score` (higher = more likely positive) for the bool labels `positive` (1-D)."
    import torch
    order = torch.argsort(score.float(), descending=True)
    pos = positive[order].double(); tp = pos.cumsum(0)
    prec = tp / torch.arange(1, len(pos) + 1, dtype=torch.float64)
    return round(float((prec * pos).sum() / pos.sum().clamp(min=1)), 4)


def _pr_curve(score, positive, n=40):
    "n (recall, precision) points of `score` at finding `positive`, for the plots."
    import torch
    order = torch.argsort(score.float(), descending=True)
    tp = positive[order].double().cumsum(0)
    idx = torch.linspace(0, len(tp) - 1, n).long()
    return [[round(float(tp[i] / tp[-1].clamp(min=1)), 4), round(float(tp[i] / (i + 1)), 4)] for i in idx]


def _prf(flag, wrong):
    "Pooled precision / recall / F1 of the bool maps `flag` (predicted error) against `wrong` (1-D, labelled pixels)."
    tp = float((flag & wrong).sum()); p = tp / max(float(flag.sum()), 1); r = tp / max(float(wrong.sum()), 1)
    return {'precision': round(p, 4), 'recall': round(r, 4), 'f1': round(2 * p * r / max(p + r, 1e-12), 4),
            'flagged': round(float(flag.float().mean()), 4), 'kept_accuracy': round(1 - float((wrong & ~flag).sum()) / max(float((~flag).sum()), 1), 4)}


def _top(score, frac):
    "Flag the `frac` share of pixels with the highest `score`."
    k = max(1, min(score.numel(), int(round(frac * score.numel()))))
    return score >= score.kthvalue(score.numel() - k + 1).values


def teacher_and_eln(m, x, net='teacher'):
    """The network's logits [B,C,H,W] and ELN keep probabilities [B,H,W], in the two BatchNorm modes:
    'filter' = train-mode BatchNorm on this batch, as stage 2 filters (running statistics restored afterwards), and
    'eval' = the ELN with its running statistics, judging the same prediction; plus the eval-mode network's logits."""
    import copy, torch
    from eln_nb.losses import resize_to
    seg = getattr(m, net)
    saved = copy.deepcopy({k: v for k, v in m.state_dict().items() if not v.is_floating_point() or 'running' in k})
    seg.train(); m.eln.train()
    z, _ = seg(x, dropout=False)
    e_f = resize_to(m.eln(x, z, dropout=False).float(), x.shape[-2:])[:, 0].sigmoid()
    m.load_state_dict(saved, strict=False)                          # training-mode forwards moved the running statistics
    seg.eval(); m.eln.eval()
    e_e = resize_to(m.eln(x, z, dropout=False).float(), x.shape[-2:])[:, 0].sigmoid()
    z_eval, _ = seg(x, dropout=False)
    return resize_to(z.float(), x.shape[-2:]), e_f, e_e, resize_to(z_eval.float(), x.shape[-2:])


def _collect(run, split, limit, data_root, threads, net='teacher'):
    "Run a checkpoint's network and ELN over a split -> (per-pixel tensors, models, config, dataset, DatasetInfo)."
    import torch
    from torch.utils.data import Subset
    from eln_nb.train import load_checkpoint_models, build_data, _size, _dataset
    from eln_nb.data import eval_loader
    from eln_nb.eln import entropy_map
    torch.set_num_threads(threads)
    m, cfg, info = load_checkpoint_models(Path(run)/'last.pt')
    if data_root: cfg.data_root = data_root
    ds = build_data(cfg).unlabelled if split == 'unlabelled' else _dataset(cfg, split)
    if limit: ds = Subset(ds, range(min(limit, len(ds))))
    dl = eval_loader(ds, cfg.unlabelled_batch_size, 0, _size(cfg.val_resize))  # the stage-2 batch size: same BN statistics
    out = {k: [] for k in ('conf', 'ent', 'eln_filter_bn', 'eln_eval_bn', 'wrong', 'valid', 'wrong_eval', 'conf_eval',
                           'ent_eval', 'pred', 'label')}
    with torch.no_grad():
        for b in dl:
            x, y = b['image'], b['label']
            z, e_f, e_e, z_ev = teacher_and_eln(m, x, net)
            C = z.shape[1]
            for k, v in (('conf', z.softmax(1).amax(1)), ('ent', entropy_map(z) / math.log(C)), ('eln_filter_bn', e_f),
                         ('eln_eval_bn', e_e), ('wrong', z.argmax(1) != y), ('valid', y != 255), ('pred', z.argmax(1)),
                         ('label', y), ('wrong_eval', z_ev.argmax(1) != y), ('conf_eval', z_ev.softmax(1).amax(1)),
                         ('ent_eval', entropy_map(z_ev) / math.log(C))):
                out[k].append(v)
    full = {k: torch.cat(v) for k, v in out.items()}
    return full, m, cfg, ds, info


def calibrate(run, threads=1, data_root=None, split='val', target=0.9):
    "The lowest ELN keep threshold t whose kept pixels (keep prob > t, filter-mode BN) are `target` accurate on `split`."
    import torch
    t0 = time.time()
    d, m, cfg, ds, _ = _collect(run, split, 0, data_root, threads, net='student')   # stage 1's end: the teacher starts as the student
    v = d['valid']
    p, right = d['eln_filter_bn'][v].double(), ~d['wrong'][v]
    order = torch.argsort(p, descending=True)
    acc = right[order].double().cumsum(0) / torch.arange(1, len(p) + 1, dtype=torch.float64)   # accuracy of the top-n kept
    ok = torch.nonzero(acc >= target).flatten()
    n = int(ok.max()) + 1 if len(ok) else 1
    thr = float(p[order][n - 1]) if n < len(p) else 0.0
    kept = p > thr
    res = {'run': Path(run).name, 'split': split, 'images': len(ds), 'pixels': int(v.sum()), 'target': target,
           'threshold': round(thr, 6), 'kept': round(float(kept.double().mean()), 4),
           'kept_accuracy': round(float(right[kept].double().mean()) if kept.any() else math.nan, 4),
           'at_0.5': {'kept': round(float((p > 0.5).double().mean()), 4),
                      'kept_accuracy': round(float(right[p > 0.5].double().mean()) if (p > 0.5).any() else math.nan, 4)},
           'accuracy': round(float(right.double().mean()), 4), 'time_s': round(time.time() - t0, 1)}
    (Path(run)/'calibration.json').write_text(json.dumps(res, indent=1))
    return res


def _scorers(d, v, mode=''):
    "{scorer: error score, higher = more likely wrong} over the labelled pixels `v`."
    if mode == 'eval': return {'eln_eval_bn': 1 - d['eln_eval_bn'][v], 'confidence': 1 - d['conf_eval'][v], 'entropy': d['ent_eval'][v]}
    return {'eln_filter_bn': 1 - d['eln_filter_bn'][v], 'eln_eval_bn': 1 - d['eln_eval_bn'][v], 'confidence': 1 - d['conf'][v],
            'entropy': d['ent'][v]}


def analyse(run, threads=1, limit=0, data_root=None, figure=None):
    "Table 4 of a run's final teacher on its unlabelled training images -> dict (also analysis.json)."
    import numpy as np, torch
    t0 = time.time()
    from eln_nb.train import _size
    d, m, cfg, ds, info = _collect(run, 'unlabelled', limit, data_root, threads)
    palette, classes = info.palette, info.classes
    v = d['valid']; wrong = d['wrong'][v]; er = float(wrong.double().mean())
    S = _scorers(d, v)
    conf_t, eln_t = cfg.conf_threshold, cfg.eln_threshold
    own = {'eln_filter_bn': S['eln_filter_bn'] > 1 - eln_t, 'eln_eval_bn': S['eln_eval_bn'] > 1 - eln_t,
           'confidence': S['confidence'] > 1 - conf_t}
    own['entropy'] = _top(S['entropy'], float(own['confidence'].double().mean()))    # entropy has no rule: confidence's rate
    rate_eln = float(own['eln_filter_bn'].double().mean())
    table = {}
    for k, s in S.items():
        table[k] = {'ap': _ap(s, wrong), **_prf(own[k], wrong),
                    'at_eln_rate': _prf(_top(s, rate_eln), wrong), 'at_error_rate': _prf(_top(s, er), wrong),
                    'pr_curve': _pr_curve(s, wrong)}
    ve = d['valid']; wrong_e = d['wrong_eval'][ve]
    Se = _scorers(d, ve, 'eval')
    table_eval = {k: {'ap': _ap(s, wrong_e), **_prf(s > (1 - eln_t if k.startswith('eln') else 1 - conf_t) if k != 'entropy'
                                                       else _top(s, float((Se['confidence'] > 1 - conf_t).double().mean())), wrong_e)}
                  for k, s in Se.items()}
    res = {'run': Path(run).name, 'filter': m.filter, 'eln_threshold': eln_t, 'conf_threshold': conf_t, 'images': len(ds),
           'pixels': int(v.sum()), 'resolution': list(d['pred'].shape[-2:]), 'network': 'final EMA teacher',
           'error_rate': round(er, 4), 'error_rate_eval_mode': round(float(wrong_e.double().mean()), 4),
           'chance_ap': round(er, 4), 'table4': table, 'table4_eval_mode': table_eval,
           'eln_mean_keep_prob': round(float(d['eln_filter_bn'][v].mean()), 4), 'time_s': round(time.time() - t0, 1)}
    if figure:                                                        # the image where ELN and confidence disagree most
        fe = (d['eln_filter_bn'] < eln_t) & d['valid']
        fc = torch.zeros_like(fe); fc[d['valid']] = _top(1 - d['conf'][d['valid']], float(fe.double().sum() / d['valid'].sum()))
        i = int(((fe ^ fc) & d['valid']).flatten(1).sum(1).argmax())
        from eln_nb.data import denormalize, eval_loader
        img = next(iter(eval_loader(torch.utils.data.Subset(ds, [i]), 1, 0, _size(cfg.val_resize))))['image']
        np.savez_compressed(figure, image=(denormalize(img)[0].permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy(),
                            label=d['label'][i].numpy().astype(np.uint8), pred=d['pred'][i].numpy().astype(np.uint8),
                            eln=d['eln_filter_bn'][i].half().numpy(), conf=d['conf'][i].half().numpy(),
                            ent=d['ent'][i].half().numpy(), eln_threshold=eln_t, index=i,
                            palette=np.array(palette, dtype=np.uint8), classes=np.array(classes))
        res['example'] = {'index': i, 'disagreeing_pixels': int(((fe ^ fc) & d['valid'])[i].sum())}
    (Path(run)/'analysis.json').write_text(json.dumps(res, indent=1))
    return res


# ---------------------------------------------------------------- aggregation
def _records(run, kind='train', phase=None):
    f = Path(run)/'metrics.jsonl'
    if not f.is_file(): return []
    recs = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
    return [r for r in recs if r.get('kind') == kind and (phase is None or r.get('phase') == phase)]


def _mean(v):
    v = [x for x in v if isinstance(x, (int, float)) and math.isfinite(x)]
    return round(sum(v) / len(v), 4) if v else None


def aux_activity(run, num_classes, k=2):
    "How often each auxiliary decoder's constraint is active in 1b, and where l_k sits against L_sup and chance."
    recs = _records(run, phase='1b')
    chance = math.log(num_classes)
    out = {'records': len(recs), 'chance_loss': round(chance, 4), 'sup': _mean([r.get('sup') for r in recs]), 'decoders': []}
    for j in range(k):
        on = [r.get(f'aux{j}_on') for r in recs]
        l = [r.get(f'aux{j}') for r in recs]
        ratio = [x / r['sup'] for x, r in zip(l, recs) if isinstance(x, (int, float)) and r.get('sup')]
        out['decoders'].append({'active': _mean(on), 'loss': _mean(l), 'loss_over_sup': _mean(ratio),
                                'loss_over_chance': round(_mean(l) / chance, 4) if _mean(l) is not None else None,
                                'trace': [[r['iter'], r.get(f'aux{j}'), r.get('sup'), r.get(f'aux{j}_on')] for r in recs]})
    return out


def _stats(v):
    v = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v: return {'mean': None, 'min': None, 'max': None, 'n': 0}
    return {'mean': round(sum(v) / len(v), 4), 'min': round(min(v), 4), 'max': round(max(v), 4), 'n': len(v)}


def _json(p): return json.loads(Path(p).read_text()) if Path(p).is_file() else None


def aggregate(a, failed=(), wall=None):
    "One JSON object from the run folders."
    O = Path(a.out)
    stage1, runs, paired = {}, {}, {}
    for s in a.seeds:
        r = _json(O/f'stage1_s{s}'/'report.json')
        if r:
            stage1[str(s)] = {'student_miou': round(r['student_miou'], 4), 'wall_time_s': r['wall_time_s'], 'phases': r['phases'],
                              'aux': aux_activity(O/f'stage1_s{s}', len(r['per_class_iou']), len(a.alphas)),
                              'calibration': _json(O/f'stage1_s{s}'/'calibration.json')}
        for b in a.methods:
            d = O/f'{b}_s{s}'; r = _json(d/'report.json')
            if not r: continue
            s2 = _records(d, phase='2')
            runs[f'{b}_s{s}'] = {'method': b, 'seed': s, 'student_miou': round(r['student_miou'], 4),
                                 'teacher_miou': round(r['teacher_miou'], 4), 'per_class_iou': r['per_class_iou'],
                                 'wall_time_s': r['wall_time_s'], 'stage2_time_s': r['phases'].get('2', {}).get('time_s'),
                                 'stage2_logs': {k: _mean([x.get(k) for x in s2]) for k in ('keep', 'pl_acc_kept', 'pl_acc_all', 'st', 'con', 'sup')},
                                 'aux': aux_activity(d, len(r['per_class_iou']), len(a.alphas)) if b == 'ecn' else None,
                                 'analysis': _json(d/'analysis.json'),
                                 'command': (d/'command.txt').read_text().strip() if (d/'command.txt').is_file() else None}
            paired.setdefault(b, {})[str(s)] = round(r['student_miou'], 4)
    diffs = {}
    for b, ref in PAIRS:
        common = [s for s in paired.get(b, {}) if s in paired.get(ref, {})]
        if not common: continue
        dd = {s: round(paired[b][s] - paired[ref][s], 4) for s in common}
        diffs[f'{b}-{ref}'] = {'per_seed': dd, 'mean': round(sum(dd.values()) / len(dd), 4), 'wins': sum(v > 0 for v in dd.values()),
                               'n': len(dd)}
    an = [runs[k]['analysis'] for k in runs if runs[k]['method'] == 'eln' and runs[k]['analysis']]
    table4 = {}
    if an:
        for sc in an[0]['table4']:
            table4[sc] = {m: _stats([x['table4'][sc][m] for x in an])['mean'] for m in ('ap', 'precision', 'recall', 'f1', 'flagged', 'kept_accuracy')}
            for at in ('at_eln_rate', 'at_error_rate'):
                table4[sc][at] = {m: _stats([x['table4'][sc][at][m] for x in an])['mean'] for m in ('precision', 'recall', 'f1', 'flagged', 'kept_accuracy')}
        table4_eval = {sc: {m: _stats([x['table4_eval_mode'][sc][m] for x in an])['mean'] for m in ('ap', 'precision', 'recall', 'f1', 'flagged')}
                       for sc in an[0]['table4_eval_mode']}
    keep = {b: {k: _stats([runs[f'{b}_s{s}']['stage2_logs'][k] for s in a.seeds if f'{b}_s{s}' in runs])['mean']
                for k in ('keep', 'pl_acc_kept', 'pl_acc_all')} for b in paired if b != 'supervised'}
    return {'benchmark': f'CamVid semi-supervised, 1/{a.split} labelled, paired branches from one stage 1 per seed',
            'created': datetime.now(timezone.utc).isoformat(timespec='seconds'),
            'command': 'python tools/camvid_benchmark.py ' + ' '.join(sys.argv[1:]),
            'seeds': list(a.seeds), 'paired': paired, 'differences': diffs, 'table4': table4,
            'table4_eval_mode': table4_eval if an else {}, 'stage2_filtering': keep, 'stage1': stage1,
            'methods': {b: {'student_miou': _stats(list(paired[b].values())),
                            'teacher_miou': _stats([runs[f'{b}_s{s}']['teacher_miou'] for s in a.seeds if f'{b}_s{s}' in runs])}
                        for b in paired},
            'setup': {'dataset': a.dataset, 'data_root': a.data_root, 'labelled': f'1/{a.split} of the training images (split_labelled, seed = split seed)',
                      'backbone': a.backbone, 'pretrained': 'none (random init)', 'resize': a.resize, 'crop': a.crop,
                      'batch': f'{a.batch_size} labelled + {a.batch_size} unlabelled', 'alphas': a.alphas,
                      'iterations': {'1a': n1a(a), '1b': a.eln_epochs * a.iters_per_epoch, '2': a.stage2_epochs * a.iters_per_epoch},
                      'test': f"{a.test_split} split ({a.test_limit or 'all'} images) at {a.resize[0]}x{a.resize[1]}",
                      'calibration': f"eln_cal: threshold fixed on the {a.calib_split} split for kept accuracy {a.cal_target}",
                      'amp': a.amp, 'threads_per_run': a.threads, 'parallel_runs': a.jobs, 'cpu': _cpu()},
            'runs': runs, 'wall_time_s': wall, 'failed': list(failed)}


def _cpu():
    name, flags = f'{os.cpu_count()} cores', []
    try:
        for l in open('/proc/cpuinfo'):
            if l.startswith('model name'): name = f"{l.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
            if l.startswith('flags'):
                flags = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in l.split()]; break
    except OSError: pass
    return f"{name}; {' '.join(flags) or 'no AVX2'}"


def _clean(o):
    "NaN -> None, so the file is strict JSON."
    if isinstance(o, float) and not math.isfinite(o): return None
    if isinstance(o, dict): return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [_clean(v) for v in o]
    return o


def main(argv=None):
    a = parser().parse_args(argv)
    if a.analysis_run: analyse(a.analysis_run, a.threads, a.analysis_limit, a.data_root, a.figure); return 0
    if a.calibrate_run: calibrate(a.calibrate_run, a.threads, a.data_root, a.calib_split, a.cal_target); return 0
    if not Path(a.data_root).is_dir(): sys.exit(f"dataset not found at {a.data_root} (pass --data-root)")
    if a.calib_split == a.test_split: sys.exit(f"--calib-split {a.calib_split!r} is the test split: choose nothing on test")
    failed, wall = [], None
    if not a.aggregate_only:
        t = time.time(); failed = run_all(a); wall = round(time.time() - t, 1)
        log(f"all jobs done in {wall:.0f} s")
    prev = _json(a.json) if a.aggregate_only else None
    res = aggregate(a, failed, wall if wall is not None else (prev or {}).get('wall_time_s'))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(_clean(res), indent=1))
    ex = [Path(a.out)/f'eln_s{s}'/'example.npz' for s in a.seeds if (Path(a.out)/f'eln_s{s}'/'example.npz').is_file()]
    if ex: shutil.copyfile(ex[0], Path(a.json).with_name(Path(a.json).stem + '_example.npz'))   # the results page's figure
    log(f"wrote {a.json}")
    for b, per in res['paired'].items():
        print(f"  {b:<11} student mIoU " + '  '.join(f"s{s} {v:.4f}" for s, v in per.items()))
    for k, d in res['differences'].items(): print(f"  {k:<22} mean {d['mean']:+.4f}  wins {d['wins']}/{d['n']}")
    for sc, t in res['table4'].items(): print(f"  table4 {sc:<14} AP {t['ap']:.3f}  P {t['precision']:.3f}  R {t['recall']:.3f}  F1 {t['f1']:.3f}")
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
