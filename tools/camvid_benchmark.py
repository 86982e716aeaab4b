#!/usr/bin/env python
"""The CamVid semi-supervised benchmark (issue 7) from one command.

Trains every (method, split seed) pair with `eln_nb_train --preset camvid` on the same schedule, each run in its own
single-threaded process (`--jobs` at a time), then scores the error localization of the final models on the UNLABELLED
training images and writes one JSON file that `nbs/13_camvid_benchmark.ipynb` shows.

    python tools/camvid_benchmark.py --out runs/camvid_bench --json nbs/results/camvid_benchmark.json

Resumable: a run whose `report.json` exists is not trained again, an `analysis.json` that exists is not recomputed
(`--aggregate-only` just rebuilds the JSON). Runs that fail are listed in the JSON under `failed` with their log tail.
"""
import argparse, json, math, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

METHODS = ('supervised', 'none', 'threshold', 'eln', 'ecn')
COST = {'eln': 4, 'ecn': 4, 'threshold': 2, 'none': 2, 'supervised': 1}   # rough relative cost: start the longest first
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent/'shared'/'data'/'camvid'


def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', default='runs/camvid_bench', help='folder of the runs (one sub-folder per method and seed)')
    p.add_argument('--json', default='nbs/results/camvid_benchmark.json', help='results file')
    p.add_argument('--methods', nargs='+', default=['supervised', 'none', 'threshold', 'eln'], choices=METHODS)
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1], help='split seeds (also the training seed of the run)')
    p.add_argument('--jobs', type=int, default=2, help='training processes at once')
    p.add_argument('--threads', type=int, default=1, help='torch/OpenMP threads per process')
    p.add_argument('--data-root', default=str(DEFAULT_DATA))
    g = p.add_argument_group('scale (the same for every method)')
    g.add_argument('--split', type=int, default=8, help='1/N of the 367 training images are labelled')
    g.add_argument('--iters-per-epoch', type=int, default=40)
    g.add_argument('--pre-epochs', type=int, default=6, help='phase 1a (supervised) epochs')
    g.add_argument('--eln-epochs', type=int, default=1, help='phase 1b (aux decoders + ELN) epochs')
    g.add_argument('--epochs', type=int, default=9, help='total epochs (stage 2 = epochs - pre - eln)')
    g.add_argument('--resize', nargs=2, type=int, default=[120, 160], help='training and test images resized to H W')
    g.add_argument('--crop', type=int, default=112, help='training crop side')
    g.add_argument('--batch-size', type=int, default=4, help='labelled and unlabelled images per step (each)')
    g.add_argument('--backbone', default='resnet18')
    g.add_argument('--amp', default='off', help='off or bf16')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--test-limit', type=int, default=0, help='evaluate on the first N test images only (0 = all 233)')
    g.add_argument('--analysis-limit', type=int, default=0, help='score error localization on N unlabelled images (0 = all)')
    g.add_argument('--analyze', nargs='*', default=['eln', 'ecn', 'threshold', 'none'],
                   help='methods whose final models get the error-localization analysis')
    g.add_argument('--extra', nargs=argparse.REMAINDER, default=[], help='further eln_nb_train options, passed as they are')
    p.add_argument('--keep-checkpoints', action='store_true', help='keep best.pt and last.prev.pt (default: only last.pt)')
    p.add_argument('--aggregate-only', action='store_true', help='do not train or analyse; rebuild the JSON from the runs')
    p.add_argument('--merge', action='store_true',
                   help='keep the methods already in --json that this invocation does not train (e.g. add ecn to a finished run)')
    p.add_argument('--analysis-run', default=None, help=argparse.SUPPRESS)   # internal: analyse one run folder
    return p


def train_args(a, method, seed, out):
    "The eln_nb_train command line of one run."
    args = ['--preset', 'camvid', '--filter', method, '--split', str(a.split), '--split-seed', str(seed), '--seed', str(seed),
            '--data-root', a.data_root, '--iters-per-epoch', str(a.iters_per_epoch), '--pre-epochs', str(a.pre_epochs),
            '--eln-epochs', str(a.eln_epochs), '--epochs', str(a.epochs), '--resize', *map(str, a.resize),
            '--val-resize', *map(str, a.resize), '--crop', str(a.crop), '--batch-size', str(a.batch_size),
            '--unlabelled-batch-size', str(a.batch_size), '--backbone', a.backbone, '--eln-backbone', a.backbone,
            '--val-split', 'test', '--val-limit', str(a.test_limit), '--amp', a.amp,
            '--channels-last' if a.channels_last else '--no-channels-last', '--eval-every', '0', '--ckpt-every', '0',
            '--keep-every', '0', '--log-every', '10', '--num-workers', '0', '--threads', str(a.threads), '--no-progress',
            '--out', str(out)]
    return args + list(a.extra)


def env(a):
    e = dict(os.environ)
    for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'): e[k] = str(a.threads)
    return e


def log(msg): print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def run_one(a, method, seed):
    "Train (unless report.json exists), then analyse (unless analysis.json exists) one run; returns an error string or None."
    out = Path(a.out)/f'{method}_s{seed}'; out.mkdir(parents=True, exist_ok=True)
    if not (out/'report.json').is_file():
        cmd = [sys.executable, '-m', 'eln_nb.cli', *train_args(a, method, seed, out)]
        (out/'command.txt').write_text(' '.join(cmd) + '\n')
        log(f"train {out.name}"); t = time.time()
        with open(out/'train.log', 'a') as f: rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env(a))
        if rc or not (out/'report.json').is_file():
            return f"{out.name}: training exited {rc}; see {out/'train.log'}"
        log(f"done  {out.name} in {time.time() - t:.0f} s")
    if not a.keep_checkpoints:
        for n in ('best.pt', 'last.prev.pt'): (out/n).unlink(missing_ok=True)
    if method in a.analyze and not (out/'analysis.json').is_file():
        cmd = [sys.executable, __file__, '--analysis-run', str(out), '--threads', str(a.threads),
               '--analysis-limit', str(a.analysis_limit), '--data-root', a.data_root]
        t = time.time()
        with open(out/'analysis.log', 'w') as f: rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env(a))
        if rc: return f"{out.name}: analysis exited {rc}; see {out/'analysis.log'}"
        log(f"analysed {out.name} in {time.time() - t:.0f} s")


# ---------------------------------------------------------------- error localization on the unlabelled training images
TAUS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)

def _ap(score, positive):
    "Average precision of `score` (higher = more likely positive) for the bool labels `positive` (1-D)."
    import torch
    order = torch.argsort(score.float(), descending=True)
    pos = positive[order].double(); tp = pos.cumsum(0)
    prec = tp / torch.arange(1, len(pos) + 1, dtype=torch.float64)
    return round(float((prec * pos).sum() / pos.sum().clamp(min=1)), 4)


def analyse(run, threads=1, limit=0, data_root=None):
    "Error-localization scores of a run's final teacher on its unlabelled training images -> dict (also analysis.json)."
    import torch
    from torch.utils.data import Subset
    from eln_nb.train import load_checkpoint_models, predict, build_data, _size
    from eln_nb.data import eval_loader
    from eln_nb.eln import entropy_map
    from eln_nb.metrics import ErrorLocalizationMeter
    torch.set_num_threads(threads)
    run = Path(run); t0 = time.time()
    m, cfg, info = load_checkpoint_models(run/'last.pt')
    if data_root: cfg.data_root = data_root
    d = build_data(cfg)
    ds = d.unlabelled if not limit else Subset(d.unlabelled, range(min(limit, len(d.unlabelled))))
    dl = eval_loader(ds, 8, 0, _size(cfg.val_resize))
    has_eln = m.eln is not None and m.filter == 'eln'
    err, conf, ent, eln_p, lab, pred = [], [], [], [], [], []
    with torch.no_grad():
        for b in dl:
            x, y = b['image'], b['label']
            z, e = predict(m.teacher, x, m.eln if has_eln else None)
            p = z.softmax(1)
            conf.append(p.amax(1)); ent.append(entropy_map(z) / math.log(z.shape[1])); pred.append(z.argmax(1)); lab.append(y)
            if has_eln: eln_p.append(e[:, 0].sigmoid())
    conf, ent, pred, lab = torch.cat(conf), torch.cat(ent), torch.cat(pred), torch.cat(lab)
    valid = lab != 255
    wrong = (pred != lab) & valid
    n_valid = int(valid.sum())
    def score(flag):
        "flag [N,H,W] bool = predicted error -> P/R/F1 (image-averaged and pooled), flagged fraction, accuracy of kept pixels."
        s = ErrorLocalizationMeter().update(flag, pred, lab).compute()
        kept = ~flag & valid
        return {**{k: round(v, 4) for k, v in s.items()}, 'flagged': round(float((flag & valid).sum()) / n_valid, 4),
                'kept_accuracy': round(1 - float((wrong & kept).sum()) / max(int(kept.sum()), 1), 4)}
    def matched(score_map, frac):
        "Threshold on `score_map` (higher = more likely wrong) that flags `frac` of the labelled pixels."
        v = score_map[valid].float()
        k = max(1, min(v.numel(), int(round(frac * v.numel()))))
        return float(v.kthvalue(v.numel() - k + 1).values)
    res = {'run': run.name, 'filter': m.filter, 'images': len(ds), 'pixels': n_valid, 'network': 'teacher (EMA), final checkpoint',
           'resolution': list(pred.shape[-2:]), 'teacher_accuracy': round(1 - float(wrong.sum()) / n_valid, 4),
           'error_rate': round(float(wrong.sum()) / n_valid, 4), 'filters': {}}
    F = res['filters']
    for tau in TAUS: F[f'conf<{tau}'] = {'kind': 'confidence', 'threshold': tau, **score(conf < tau)}
    if has_eln:
        eln_p = torch.cat(eln_p)
        F['eln'] = {'kind': 'eln', 'threshold': 0.5, **score(eln_p < 0.5)}
        frac = F['eln']['flagged']
        tc = 1 - matched(1 - conf, frac); F['conf@eln_rate'] = {'kind': 'confidence', 'threshold': round(tc, 4), **score(conf < tc)}
        th = matched(ent, frac); F['entropy@eln_rate'] = {'kind': 'entropy', 'threshold': round(th, 4), **score(ent > th)}
        F['oracle_rate'] = {'kind': 'note', 'flagged': res['error_rate']}
        # ranking alone, at the true error rate: each score flags exactly as many pixels as the teacher gets wrong
        er = res['error_rate']
        te = 1 - matched(1 - eln_p, er); F['eln@error_rate'] = {'kind': 'eln', 'threshold': round(te, 6), **score(eln_p < te)}
        tc = 1 - matched(1 - conf, er); F['conf@error_rate'] = {'kind': 'confidence', 'threshold': round(tc, 4), **score(conf < tc)}
        res['eln_mean_keep_prob'] = round(float(eln_p[valid].mean()), 4)   # the ELN's belief in the teacher's accuracy
    # threshold-free: average precision of each score at finding the wrong pixels (chance = the error rate)
    res['average_precision'] = {'confidence': _ap(1 - conf[valid], wrong[valid]), 'entropy': _ap(ent[valid], wrong[valid])}
    if has_eln: res['average_precision']['eln'] = _ap(1 - eln_p[valid], wrong[valid])
    res['time_s'] = round(time.time() - t0, 1)
    (run/'analysis.json').write_text(json.dumps(res, indent=1))
    return res


# ---------------------------------------------------------------- aggregation
def _stage2_logs(run):
    "Means of keep / pl_acc_kept / pl_acc_all over the stage-2 training log records."
    f = run/'metrics.jsonl'
    if not f.is_file(): return {}
    recs = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
    recs = [r for r in recs if r.get('kind') == 'train' and r.get('phase') == '2']
    out = {}
    for k in ('keep', 'pl_acc_kept', 'pl_acc_all', 'st', 'con', 'sup', 'eln'):
        v = [r[k] for r in recs if k in r and isinstance(r[k], (int, float))]
        if v: out[k] = round(sum(v) / len(v), 4)
    out['records'] = len(recs)
    return out


def _stats(v):
    v = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v: return {'mean': None, 'min': None, 'max': None, 'n': 0}
    return {'mean': round(sum(v) / len(v), 4), 'min': round(min(v), 4), 'max': round(max(v), 4), 'n': len(v)}


def aggregate(a, failed=()):
    "One JSON object from every run folder of (methods x seeds)."
    runs, methods = {}, {}
    for method in a.methods:
        per = []
        for seed in a.seeds:
            out = Path(a.out)/f'{method}_s{seed}'
            if not (out/'report.json').is_file(): continue
            r = json.loads((out/'report.json').read_text())
            cfg = json.loads((out/'config.json').read_text()) if (out/'config.json').is_file() else {}
            an = json.loads((out/'analysis.json').read_text()) if (out/'analysis.json').is_file() else None
            rec = {'method': method, 'split_seed': seed, 'student_miou': round(r['student_miou'], 4),
                   'teacher_miou': round(r['teacher_miou'], 4), 'pixel_accuracy': round(r['pixel_accuracy'], 4),
                   'per_class_iou': r['per_class_iou'], 'teacher_per_class_iou': r.get('teacher_per_class_iou', {}),
                   'eln_test': {k: r.get(k) for k in ('eln_precision', 'eln_recall', 'eln_f1')} if method == 'eln' else None,
                   'iterations': r['iterations'], 'wall_time_s': r['wall_time_s'], 'phases': r['phases'],
                   'peak_memory_mb': r.get('peak_memory_mb'), 'amp': r.get('amp'), 'stage2_logs': _stage2_logs(out),
                   'analysis': an, 'command': (out/'command.txt').read_text().strip() if (out/'command.txt').is_file() else None}
            runs[f'{method}_s{seed}'] = rec; per.append(rec)
        if not per: continue
        classes = list(per[0]['per_class_iou'])
        methods[method] = {'seeds': [p['split_seed'] for p in per],
                           'student_miou': _stats([p['student_miou'] for p in per]),
                           'teacher_miou': _stats([p['teacher_miou'] for p in per]),
                           'per_class_iou': {c: _stats([p['per_class_iou'][c] for p in per])['mean'] for c in classes},
                           'wall_time_s': _stats([p['wall_time_s'] for p in per])}
        s2 = [p['stage2_logs'] for p in per if p['stage2_logs']]
        if s2: methods[method]['stage2_logs'] = {k: _stats([x.get(k) for x in s2])['mean'] for k in ('keep', 'pl_acc_kept', 'pl_acc_all')}
    # error localization: mean over seeds of each filter's scores (eln runs, plus the threshold runs' own teacher)
    loc = {}
    for method in ('eln', 'threshold', 'none', 'ecn'):
        ans = [runs[k]['analysis'] for k in runs if runs[k]['method'] == method and runs[k]['analysis']]
        if not ans: continue
        names = [n for n in ans[0]['filters'] if ans[0]['filters'][n].get('kind') != 'note']
        loc[method] = {'runs': [x['run'] for x in ans], 'error_rate': _stats([x['error_rate'] for x in ans])['mean'],
                       'teacher_accuracy': _stats([x['teacher_accuracy'] for x in ans])['mean'],
                       'eln_mean_keep_prob': _stats([x.get('eln_mean_keep_prob') for x in ans])['mean'],
                       'average_precision': {k: _stats([x.get('average_precision', {}).get(k) for x in ans])['mean']
                                             for k in ans[0].get('average_precision', {})},
                       'per_run': {x['run']: {'error_rate': x['error_rate'], 'average_precision': x.get('average_precision'),
                                              **{n: {k: x['filters'][n].get(k) for k in ('flagged', 'precision', 'recall', 'f1')}
                                                 for n in ('eln', 'conf<0.95') if n in x['filters']}} for x in ans},
                       'filters': {n: {k: _stats([x['filters'][n].get(k) for x in ans])['mean']
                                       for k in ('threshold', 'precision', 'recall', 'f1', 'precision_total', 'recall_total',
                                                 'f1_total', 'flagged', 'kept_accuracy')} for n in names}}
    first = next(iter(runs.values()), None)
    return {'benchmark': 'CamVid semi-supervised, 1/%d labelled' % a.split, 'created': datetime.now(timezone.utc).isoformat(timespec='seconds'),
            'command': 'python tools/camvid_benchmark.py ' + ' '.join(sys.argv[1:]),
            'setup': {'dataset': 'CamVid 11 classes (SegNet split): 367 train / 233 test',
                      'labelled': f'1/{a.split} of the 367 training images, drawn by eln_nb.data.split_labelled(names, {a.split}, seed)',
                      'split_seeds': a.seeds, 'methods': a.methods, 'backbone': a.backbone, 'eln_backbone': a.backbone,
                      'pretrained': 'none (random init: no ImageNet weights on this machine)',
                      'resize': a.resize, 'crop': a.crop, 'batch': f'{a.batch_size} labelled + {a.batch_size} unlabelled',
                      'iters_per_epoch': a.iters_per_epoch, 'pre_epochs': a.pre_epochs, 'eln_epochs': a.eln_epochs,
                      'epochs': a.epochs, 'iterations': {'1a': a.pre_epochs * a.iters_per_epoch, '1b': a.eln_epochs * a.iters_per_epoch,
                                                         '2': (a.epochs - a.pre_epochs - a.eln_epochs) * a.iters_per_epoch},
                      'amp': a.amp, 'channels_last': a.channels_last, 'threads_per_run': a.threads, 'parallel_runs': a.jobs,
                      'test': f"CamVid test split ({a.test_limit or 233} images), image and label resized to {a.resize[0]}x{a.resize[1]}, single scale",
                      'error_localization': 'final EMA teacher on the unlabelled training images (weak view = no augmentation), '
                                            'positive = teacher prediction wrong; ELN error = sigmoid < 0.5; confidence error = max softmax < tau; '
                                            'entropy error = normalised entropy > h (h and the matched tau flag as many pixels as the ELN)',
                      'cpu': _cpu(), 'other': 'the rest of the camvid preset (eln_nb.train.PRESETS["camvid"])'},
            'methods': methods, 'error_localization': loc, 'runs': runs, 'failed': list(failed)}


def merge(old, new):
    "Methods (with their runs and error-localization scores) of an earlier results file that `new` lacks, added to `new`."
    added = [m for m in old['methods'] if m not in new['methods']]
    for m in added:
        new['methods'][m] = old['methods'][m]
        new['runs'].update({k: r for k, r in old['runs'].items() if r['method'] == m})
        if m in old['error_localization']: new['error_localization'][m] = old['error_localization'][m]
    if added:
        order = [m for m in METHODS if m in new['methods']]
        new['methods'] = {m: new['methods'][m] for m in order}
        new['runs'] = {k: new['runs'][k] for m in order for k in new['runs'] if new['runs'][k]['method'] == m}
        new['setup']['methods'] = order
        new['merged'] = {'methods': added, 'from_created': old['created'], 'from_command': old['command'],
                         'note': 'these methods were trained by the earlier command; the others by this one'}
    new['failed'] = list(old.get('failed', [])) + list(new['failed'])
    return new


def _cpu():
    try:
        for l in open('/proc/cpuinfo'):
            if l.startswith('model name'): return f"{l.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError: pass
    return f'{os.cpu_count()} cores'


def _clean(o):
    "NaN -> None, so the file is strict JSON."
    if isinstance(o, float) and not math.isfinite(o): return None
    if isinstance(o, dict): return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [_clean(v) for v in o]
    return o


def main(argv=None):
    a = parser().parse_args(argv)
    if a.analysis_run:
        analyse(a.analysis_run, a.threads, a.analysis_limit, a.data_root); return 0
    if not Path(a.data_root).is_dir(): sys.exit(f"CamVid not found at {a.data_root} (pass --data-root)")
    failed = []
    if not a.aggregate_only:
        todo = sorted([(m, s) for m in a.methods for s in a.seeds], key=lambda x: (-COST[x[0]], x[1]))
        t = time.time()
        with ThreadPoolExecutor(max(1, a.jobs)) as ex:
            for err in ex.map(lambda ms: run_one(a, *ms), todo):
                if err: failed.append(err); log('FAILED ' + err)
        log(f"all runs done in {time.time() - t:.0f} s")
    res = aggregate(a, failed)
    if a.merge and Path(a.json).is_file(): res = merge(json.loads(Path(a.json).read_text()), res)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(_clean(res), indent=1))
    log(f"wrote {a.json}")
    for m, v in res['methods'].items():
        s = v['student_miou']; print(f"  {m:<11} student mIoU {s['mean']:.4f} [{s['min']:.4f}, {s['max']:.4f}] over {s['n']} seeds")
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
