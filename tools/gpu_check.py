#!/usr/bin/env python
"""One-command GPU check of eln_nb (issue 12, item 5): on any machine with a CUDA GPU, in under 8 minutes.

    python tools/gpu_check.py --out gpu_check.json

Parts, each in its own process with a timeout (a failing or hanging part is recorded with its error; the rest still run):
  demo        `eln_nb_train --preset demo --device cuda` to the end, in a fresh output folder (amp auto: bf16 where supported)
  bench_bf16  the official preset (ResNet-50 + ELN ResNet-34, 321x321, 2+2 images, 21 classes) through `eln_nb_bench`,
  bench_fp16  at bf16 and at fp16 with a GradScaler: s/iter, images/s, torch.cuda.max_memory_allocated, FLOPs counted by
              torch.utils.flop_counter.FlopCounterMode and MFU against the card's dense bf16/fp16 tensor peak
  torchrun    one step of each phase under `torchrun --standalone --nproc_per_node 1` with `--sync-bn on`, plus a direct
              check of the SyncBatchNorm autograd function (NCCL, one rank) against plain BatchNorm
  compile     one step of each phase with `--compile` (inductor)

The parts share one time budget (`--budget`, default 465 s): a part may use what the parts before it left unused, never the
share reserved for the parts after it. One JSON file (`--out`) holds the card, torch/CUDA versions and every part's numbers
or error. Without a CUDA GPU it says so, writes a JSON that says so, and exits 0. Exit status: 0 when every part passed,
1 when one failed. `--device cpu --tiny` (hidden) runs every part on the CPU at a tiny size, for the tests.
"""
import argparse, datetime, json, os, platform, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ('demo', 'bench_bf16', 'bench_fp16', 'torchrun', 'compile')
BUDGET = {'demo': 75, 'bench_bf16': 90, 'bench_fp16': 90, 'torchrun': 60, 'compile': 150}   # seconds; sum 465 < 8 min

# Dense (no sparsity) bf16/fp16 tensor-core peak TFLOP/s with fp32 accumulation, by a substring of
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first. None: a name that would
# otherwise match a wrong entry (A10G is not an A10) and whose peak is not published: MFU is then not reported.
PEAK_TFLOPS = (
    ('H100 PCIe', 756.0), ('H100 NVL', 835.0), ('H200 NVL', 835.0), ('H200', 989.0), ('H100', 989.0),
    ('A100', 312.0), ('A10G', None), ('A10', 125.0), ('L40S', 362.0), ('L4', 121.0),
    ('RTX 4090', 165.0), ('RTX 3090', 71.0),
)

def peak_tflops(name:str):
    "(peak dense bf16/fp16 TFLOP/s, the table entry that matched) for a CUDA device name; (None, None) when unknown."
    for key, v in PEAK_TFLOPS:
        if key.lower() in (name or '').lower(): return (v, key) if v else (None, None)
    return None, None

# ---------------------------------------------------------------------------------------------------------------- plumbing
def tail(path, n=3000):
    try: return Path(path).read_text(errors='replace')[-n:]
    except OSError: return ''

def run_child(cmd, log, timeout, env=None, cwd=None) -> dict:
    "Run `cmd` in its own process group, stdout+stderr to `log`, killed at `timeout` s -> {rc, wall_s, timed_out}."
    t0 = time.perf_counter()
    with open(log, 'w') as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try: rc, timed_out = p.wait(timeout=max(timeout, 1)), False
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):     # the group this call started: torchrun and its workers too
                try: os.killpg(p.pid, sig)
                except ProcessLookupError: pass
                try: p.wait(timeout=10)
                except subprocess.TimeoutExpired: pass
            rc = p.returncode
    return {'rc': rc, 'wall_s': round(time.perf_counter() - t0, 2), 'timed_out': timed_out}

def last_json(text:str) -> dict:
    "The last line of `text` that parses as a JSON object."
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith('{'):
            try: return json.loads(line)
            except ValueError: pass
    raise ValueError('no JSON line in the output')

def child_env(a) -> dict:
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(p for p in (str(REPO), os.environ.get('PYTHONPATH', '')) if p)}
    env.setdefault('ELN_NB_OFFLINE', '1')
    if a.tiny: env.setdefault('OMP_NUM_THREADS', '1')
    return env

def train_schedule(a, iters:int) -> list:
    "eln_nb_train options for `iters` iterations of each phase (1a, 1b, 2), no checkpoints but the last, a small validation."
    opts = ['--iters-per-epoch', str(iters), '--pre-epochs', '1', '--eln-epochs', '1', '--epochs', '3',
            '--eval-every', '0', '--ckpt-every', '0', '--keep-every', '0', '--log-every', '1', '--val-limit', '2']
    return opts + tiny_train_opts(a)

def tiny_train_opts(a) -> list:
    "The demo preset shrunk to seconds on one CPU thread (only with --tiny)."
    if not a.tiny: return []
    return ['--synthetic-n', '8', '--synthetic-val-n', '2', '--synthetic-size', '32', '--crop', '32', '--split', '2',
            '--window-size', '4', '--windows', '2', '--batch-size', '2', '--unlabelled-batch-size', '2', '--threads', '1',
            '--amp', 'off']

def report_of(out_dir:Path) -> dict:
    "The numbers of an eln_nb_train run's report.json worth keeping."
    r = json.loads((out_dir/'report.json').read_text())
    keep = ('iterations', 'student_miou', 'teacher_miou', 'pixel_accuracy', 'eln_f1', 'wall_time_s', 'peak_memory_mb',
            'device', 'world_size', 'amp', 'phases')
    return {k: r.get(k) for k in keep}

# ------------------------------------------------------------------------------------------------------------------- parts
def demo_cmd(a, work:Path) -> list:
    extra = ['--iters-per-epoch', '1', '--pre-epochs', '1', '--eln-epochs', '1', '--epochs', '3'] if a.tiny else []
    return [sys.executable, '-m', 'eln_nb.cli', '--preset', 'demo', '--device', a.device, '--out', str(work/'demo'),
            '--no-progress', *extra, *tiny_train_opts(a)]

def part_demo(a, work:Path, timeout:float) -> dict:
    "(a) the demo preset (`eln_nb_train --preset demo`), trained to the end on the device, in a fresh output folder."
    return _train_part(a, demo_cmd(a, work), work/'demo', work/'demo.log', timeout)

def progress(out:Path) -> str:
    "How far a run got: its last metrics.jsonl record."
    try: return '; last record in metrics.jsonl: ' + (out/'metrics.jsonl').read_text().strip().splitlines()[-1][:300]
    except (OSError, IndexError): return '; no metrics.jsonl record'

def _train_part(a, cmd, out, log, timeout, env=None) -> dict:
    r = {'command': cmd, **run_child(cmd, log, timeout, env or child_env(a), REPO)}
    if r['timed_out']: raise TimeoutError(f"timed out after {timeout:.0f} s{progress(out)}; log tail:\n{tail(log)}")
    if r['rc']: raise RuntimeError(f"exit status {r['rc']}{progress(out)}; log tail:\n{tail(log)}")
    r['report'] = report_of(out)
    return r

def bench_argv(a, amp:str) -> list:
    "`eln_nb_bench` options: the official preset on the device (tiny: ResNet-18 at 48x48, one iteration)."
    if a.tiny:   # fp16 runs ~10x slower than bf16 on a CPU: there, phase 1a only, at 32x32, without the floor
        size = ['--size', '48', '--backbone', 'resnet18', '--eln-backbone', 'resnet18', '--num-classes', '3',
                '--iters', '1', '--warmup', '0', '--breakdown-iters', '1', '--threads', '1']
        if amp == 'fp16': size += ['--size', '32', '--phases', '1a', '--no-floor', '--breakdown-iters', '0']
    else:
        size = ['--size', '321', '--backbone', 'resnet50', '--eln-backbone', 'resnet34', '--num-classes', '21', '--batch', '2',
                '--iters', str(a.bench_iters), '--warmup', str(a.bench_warmup), '--breakdown-iters', '2', '--threads', '0']
    return [*size, '--amp', amp, '--device', a.device, '--data', a.bench_data, '--isolate', 'off', '--no-calibrate', '--flops',
            '--json']

def bench_cmd(a, amp:str, peak) -> list:
    argv = bench_argv(a, amp) + (['--peak-tflops', str(peak)] if peak else [])
    return [sys.executable, '-c', f'import sys; from eln_nb.bench import bench_main; sys.exit(bench_main({argv!r}))']

def part_bench(a, work:Path, timeout:float, amp:str, peak) -> dict:
    "(b) the official preset's three phases at `amp` (fp16: with a GradScaler) through eln_nb.bench."
    argv = bench_argv(a, amp) + (['--peak-tflops', str(peak)] if peak else [])
    cmd, log = bench_cmd(a, amp, peak), work/f'bench_{amp}.log'
    r = {'command': ['eln_nb_bench', *argv], **run_child(cmd, log, timeout, child_env(a), REPO)}
    if r['timed_out']: raise TimeoutError(f"timed out after {timeout:.0f} s; log tail:\n{tail(log)}")
    if r['rc']: raise RuntimeError(f"exit status {r['rc']}; log tail:\n{tail(log)}")
    rep = last_json(tail(log, 10**7))
    mfu = rep.get('mfu') or {}
    r['phases'] = {p: {'s_per_iter': v['median_s'], 'min_s': v['min_s'], 'images_per_s': v['images_per_s'],
                       'max_memory_allocated_mb' if a.device.startswith('cuda') else 'peak_rss_mb': v['peak_memory_mb'],
                       'gflop_per_iter': v.get('gflop'), 'tflop_per_s': v.get('tflop_per_s'), 'mfu': mfu.get(p),
                       'floor_ratio': v.get('floor_ratio'), 'times_s': v['times_s']}
                   for p, v in rep['phases'].items()}
    r['breakdown_phase2_s'] = rep.get('breakdown')
    r['config'] = rep.get('config')
    return r

def torchrun_cmd(a, work:Path) -> list:
    cli = ['--preset', 'demo', '--sync-bn', 'on', '--device', a.device, '--out', str(work/'torchrun'), '--no-progress',
           *train_schedule(a, 1)]
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(a.torchrun_procs),
            str(Path(__file__).resolve()), '--torchrun-child', str(work/'torchrun_child.json'), '--', *cli]

def part_torchrun(a, work:Path, timeout:float) -> dict:
    "(c) one step of each phase under torchrun --nproc_per_node N with --sync-bn on, and the SyncBatchNorm function itself."
    out, info = work/'torchrun', work/'torchrun_child.json'
    r = _train_part(a, torchrun_cmd(a, work), out, work/'torchrun.log', timeout)
    r.update(json.loads(info.read_text()))
    sb = r.get('syncbn_function') or {}
    if sb.get('ok') is False: r.update(ok=False, error=f"SyncBatchNorm function check failed: {sb}")
    return r

def torchrun_child(info_path, cli_argv) -> int:
    "Inside torchrun: train as eln_nb_train does, and record what the run really used (DDP, SyncBatchNorm modules)."
    import torch, torch.distributed as dist
    from eln_nb.cli import parse_config
    from eln_nb.train import Trainer
    cfg, _ = parse_config(cli_argv)
    t = Trainer(cfg)
    n_sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in t.m.modules())
    info = {'world_size': t.ws, 'rank': t.rank, 'device': str(t.device), 'sync_bn_modules': n_sync,
            'ddp': isinstance(t.step, torch.nn.parallel.DistributedDataParallel),
            'dist_backend': dist.get_backend() if dist.is_initialized() else None}
    if t.ws == 1:
        info['note'] = ('world size 1: the Trainer converts BatchNorm to SyncBatchNorm and wraps DDP only when WORLD_SIZE > 1 '
                        '(and SyncBatchNorm itself falls back to plain batch_norm at world size 1); syncbn_function below runs '
                        'the SyncBatchNorm autograd function directly on one rank')
    try: t.fit()
    finally:
        if dist.is_available() and dist.is_initialized(): dist.destroy_process_group()
    if t.rank == 0:
        try: info['syncbn_function'] = (syncbn_function_check(t.device) if t.ws == 1 else
                                        {'ok': None, 'skipped': f'world size {t.ws}: the training run itself used SyncBatchNorm'})
        except Exception as e: info['syncbn_function'] = {'ok': False, 'error': f'{type(e).__name__}: {e}'}
        Path(info_path).write_text(json.dumps(info))
    return 0

def syncbn_function_check(device) -> dict:
    "Forward and backward of torch's SyncBatchNorm autograd function on a one-rank group against F.batch_norm."
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch.nn.modules._functions import SyncBatchNorm as SyncBNFunction
    if device.type != 'cuda': return {'ok': None, 'skipped': 'the SyncBatchNorm kernels are CUDA-only'}
    dist.init_process_group('nccl', store=dist.HashStore(), rank=0, world_size=1, device_id=device)
    try:
        g = torch.Generator(device).manual_seed(0)
        x = torch.randn(4, 8, 16, 16, device=device, generator=g)
        w, b = torch.rand(8, device=device) + 0.5, torch.randn(8, device=device)
        rm, rv, rm2, rv2 = torch.zeros(8, device=device), torch.ones(8, device=device), torch.zeros(8, device=device), torch.ones(8, device=device)
        outs = []
        for fn, (m, v) in ((lambda x, w, b, m, v: SyncBNFunction.apply(x, w, b, m, v, 1e-5, 0.1, dist.group.WORLD, 1), (rm, rv)),
                           (lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, True, 0.1, 1e-5), (rm2, rv2))):
            xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
            y = fn(xs, ws, bs, m, v); (y * torch.arange(y.numel(), device=device).view_as(y).sin()).sum().backward()
            outs.append((y.detach(), xs.grad, ws.grad, bs.grad))
        torch.cuda.synchronize(device)
        rel = lambda p, q: float((p - q).abs().max() / q.abs().max().clamp(min=1e-6))
        diff = max([rel(p, q) for p, q in zip(*outs)] + [rel(rm, rm2), rel(rv, rv2)])
        return {'ok': diff < 1e-3, 'max_rel_diff': diff, 'backend': 'nccl',
                'what': 'output, input/weight/bias gradients and running statistics against F.batch_norm'}
    finally: dist.destroy_process_group()

def compile_cmd(a, work:Path) -> list:
    return [sys.executable, '-m', 'eln_nb.cli', '--preset', 'demo', '--compile', '--device', a.device, '--out',
            str(work/'compile'), '--no-progress', *train_schedule(a, 1)]

def part_compile(a, work:Path, timeout:float) -> dict:
    "(d) one step of each phase with --compile (torch.compile, inductor)."
    env = child_env(a)
    r = _train_part(a, compile_cmd(a, work), work/'compile', work/'compile.log', timeout, env)
    if env.get('TORCH_COMPILE_DISABLE') == '1': r['note'] = 'TORCH_COMPILE_DISABLE=1 was set: torch.compile was a no-op'
    return r

# -------------------------------------------------------------------------------------------------------------------- main
def machine(a) -> dict:
    import torch
    info = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'cudnn': None, 'python': platform.python_version(),
            'host': platform.node(), 'cuda_available': torch.cuda.is_available()}
    try: info['cudnn'] = torch.backends.cudnn.version()
    except Exception: pass
    try: info['git_commit'] = subprocess.run(['git', '-C', str(REPO), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                                             timeout=10).stdout.strip() or None
    except Exception: info['git_commit'] = None
    if a.device.startswith('cuda') and torch.cuda.is_available():
        d = torch.device(a.device if ':' in a.device else 'cuda:0')
        p = torch.cuda.get_device_properties(d)
        info.update(card=torch.cuda.get_device_name(d), device_count=torch.cuda.device_count(), capability=[p.major, p.minor],
                    total_memory_gib=round(p.total_memory / 2**30, 1),
                    bf16_supported=torch.cuda.is_bf16_supported())
        try: v = torch.cuda.nccl.version(); info['nccl'] = '.'.join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception: info['nccl'] = None
        try: info['driver'] = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception: info['driver'] = None
    else: info['card'] = None
    return info

def parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', default='gpu_check.json', help='the JSON report')
    p.add_argument('--parts', nargs='+', default=list(PARTS), choices=PARTS, help='parts to run, in this order')
    p.add_argument('--budget', type=float, default=float(sum(BUDGET.values())),
                   help='seconds for all parts together (each part has a share: ' + ', '.join(f'{k} {v}' for k, v in BUDGET.items()) + ')')
    p.add_argument('--bench-iters', type=int, default=10, help='timed iterations per phase of the official preset')
    p.add_argument('--bench-warmup', type=int, default=3, help='untimed iterations before them')
    p.add_argument('--bench-data', default='synthetic-tensors', choices=('synthetic-tensors', 'loader'),
                   help='fixed tensors on the device (compute only), or batches from the CPU data loader')
    p.add_argument('--peak-tflops', type=float, default=None, help="the card's dense bf16/fp16 peak, for cards not in the table")
    p.add_argument('--torchrun-procs', type=int, default=1, help='processes (GPUs) for the torchrun part (>1: DDP + SyncBatchNorm)')
    p.add_argument('--workdir', default=None, help='folder for the runs and logs, made afresh (none given: a temporary folder, removed at the end)')
    p.add_argument('--keep', action='store_true', help='keep the work folder')
    p.add_argument('--dry-run', action='store_true', help='print and write the plan (parts, time shares, commands); run nothing')
    p.add_argument('--device', default='cuda', help=argparse.SUPPRESS)          # tests: cpu
    p.add_argument('--tiny', action='store_true', help=argparse.SUPPRESS)       # tests: every part at a tiny size
    p.add_argument('--torchrun-child', default=None, help=argparse.SUPPRESS)    # internal: the process torchrun starts
    return p

def write(path, rep):
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp'); tmp.write_text(json.dumps(rep, indent=1)); os.replace(tmp, path)

def summary_lines(rep) -> list:
    L = [f"gpu_check: {rep.get('card') or rep['device']}, torch {rep['torch']}, CUDA {rep['cuda']}: "
         f"{'all parts passed' if rep['ok'] else 'FAILED: ' + ', '.join(k for k, v in rep['parts'].items() if not v['ok'])} "
         f"in {rep['wall_s']:.0f} s"]
    for k, v in rep['parts'].items():
        L.append(f"  {k:<11}{'ok' if v['ok'] else 'FAILED':<7}{v['wall_s']:7.1f} s (limit {v['timeout_s']:.0f} s)"
                 + ('' if v['ok'] else '  ' + v['error'].splitlines()[0][:150]))
        for ph, r in (v.get('phases') or {}).items():
            mem = r.get('max_memory_allocated_mb', r.get('peak_rss_mb'))
            L.append(f"      phase {ph:<3}{r['s_per_iter']:8.3f} s/iter {r['images_per_s']:8.1f} img/s {mem:8.0f} MiB"
                     f"  MFU {'-' if r['mfu'] is None else format(r['mfu'], '.1%')}")
    return L

MARKER = '.gpu_check_workdir'

def set_peak(a, rep):
    "The card's peak TFLOP/s (table or --peak-tflops) into `rep`; returns it (None: unknown)."
    peak, key = (a.peak_tflops, '--peak-tflops') if a.peak_tflops else peak_tflops(rep.get('card') or '')
    rep['peak_tflops'], rep['peak_source'] = peak, key and (key if key == '--peak-tflops' else f'table entry {key!r}')
    rep['mfu_note'] = ("MFU = FLOPs counted by torch.utils.flop_counter.FlopCounterMode for one iteration (forward+backward) / "
                       "median s/iter / the card's dense bf16/fp16 tensor peak" if peak else
                       f"MFU not reported: {rep.get('card') or a.device!r} is not in the peak table (pass --peak-tflops)")
    return peak

def dry_run(a, rep) -> int:
    "Print and write the plan (each part's time share and command) without running anything; needs no GPU."
    import shlex
    peak, work = set_peak(a, rep), Path(a.workdir or Path(tempfile.gettempdir())/'gpu_check_XXXXXX')
    parts = list(dict.fromkeys(a.parts)); scale = a.budget / sum(BUDGET[n] for n in parts)
    bench = lambda amp: ['eln_nb_bench', *bench_argv(a, amp), *(['--peak-tflops', str(peak)] if peak else [])]  # what the child runs
    cmds = {'demo': lambda: demo_cmd(a, work), 'bench_bf16': lambda: bench('bf16'),
            'bench_fp16': lambda: bench('fp16'), 'torchrun': lambda: torchrun_cmd(a, work),
            'compile': lambda: compile_cmd(a, work)}
    rep.update(dry_run=True, budget_s=a.budget, ok=True, plan={n: {'share_s': round(scale * BUDGET[n], 1), 'command': cmds[n]()}
                                                              for n in parts})
    print(f"gpu_check --dry-run: {rep.get('card') or 'no CUDA GPU here'}; budget {a.budget:.0f} s; peak "
          f"{rep['peak_tflops'] or 'unknown'} TFLOP/s")
    for n, v in rep['plan'].items(): print(f"  {n} (share {v['share_s']:.0f} s): {shlex.join(v['command'])}")
    write(a.out, rep); print(f"wrote {a.out}"); return 0

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if '--torchrun-child' in argv:                 # the process torchrun starts: `--torchrun-child INFO -- <eln_nb_train options>`
        i, j = argv.index('--torchrun-child'), argv.index('--')
        return torchrun_child(argv[i + 1], argv[j + 1:])
    a = parser().parse_args(argv)
    t0, started = time.perf_counter(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
    import torch
    rep = {'tool': 'tools/gpu_check.py', 'started_utc': started, 'device': a.device, 'tiny': a.tiny, **machine(a)}
    if a.dry_run: return dry_run(a, rep)
    if a.device.startswith('cuda') and not torch.cuda.is_available():
        rep.update(gpu=False, ok=True, parts={}, wall_s=round(time.perf_counter() - t0, 2),
                   message=f"no CUDA GPU found (torch {torch.__version__}, built for CUDA {torch.version.cuda}: "
                           "torch.cuda.is_available() is False); nothing was checked")
        write(a.out, rep); print(f"gpu_check: {rep['message']}; wrote {a.out}"); return 0
    rep['gpu'] = a.device.startswith('cuda')
    peak = set_peak(a, rep)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix='gpu_check_'))
    if a.workdir and work.exists() and any(work.iterdir()):   # a fresh out dir: never resume an earlier check's runs
        if not (work/MARKER).is_file():
            print(f"gpu_check: error: --workdir {work} exists and is not a gpu_check work folder; give a new one", file=sys.stderr)
            return 2
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True); (work/MARKER).write_text('a tools/gpu_check.py work folder\n')
    rep.update(budget_s=a.budget, workdir=str(work) if a.keep or a.workdir else None, parts={})
    runners = {'demo': lambda tl: part_demo(a, work, tl), 'bench_bf16': lambda tl: part_bench(a, work, tl, 'bf16', peak),
               'bench_fp16': lambda tl: part_bench(a, work, tl, 'fp16', peak), 'torchrun': lambda tl: part_torchrun(a, work, tl),
               'compile': lambda tl: part_compile(a, work, tl)}
    parts = list(dict.fromkeys(a.parts)); scale = a.budget / sum(BUDGET[n] for n in parts)
    try:
        for i, name in enumerate(parts):
            reserve = scale * sum(BUDGET[n] for n in parts[i + 1:])
            limit = max(a.budget - (time.perf_counter() - t0) - reserve, 0)
            print(f"gpu_check: {name} (limit {limit:.0f} s) ...", flush=True)
            p0 = time.perf_counter()
            try:
                if limit < 5: raise TimeoutError('no time left in the budget')
                res = {'ok': True, 'error': None, **runners[name](limit)}
            except Exception as e:
                res = {'ok': False, 'error': f'{type(e).__name__}: {e}'}
            res['wall_s'], res['timeout_s'] = round(time.perf_counter() - p0, 2), round(limit, 1)
            rep['parts'][name] = res
            print(f"gpu_check: {name} {'ok' if res['ok'] else 'FAILED'} in {res['wall_s']:.1f} s", flush=True)
            rep['ok'] = all(v['ok'] for v in rep['parts'].values())
            rep['wall_s'] = round(time.perf_counter() - t0, 2); write(a.out, rep)     # partial results survive a kill
    finally:
        if not (a.keep or a.workdir): shutil.rmtree(work, ignore_errors=True)
    rep['wall_s'] = round(time.perf_counter() - t0, 2); rep['summary'] = summary_lines(rep); write(a.out, rep)
    print('\n'.join(rep['summary']) + f"\nwrote {a.out}", flush=True)
    return 0 if rep['ok'] else 1

if __name__ == '__main__':
    sys.exit(main())
