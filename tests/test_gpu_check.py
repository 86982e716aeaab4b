"tools/gpu_check.py on the CPU: the no-GPU report, every part's runner at a tiny size (--device cpu --tiny), failures recorded."
import importlib.util, json, os, subprocess, sys, time
from pathlib import Path
import pytest, torch
from helpers import subprocess_env

SCRIPT = Path(__file__).resolve().parents[1]/'tools'/'gpu_check.py'

def _module():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m

def _run(tmp_path, *args, env=None, timeout=300):
    out = tmp_path/'gpu_check.json'
    r = subprocess.run([sys.executable, str(SCRIPT), '--out', str(out), *args], capture_output=True, text=True,
                       env=env or subprocess_env(), timeout=timeout)
    return r, json.loads(out.read_text())

def test_peak_table():
    m = _module()
    assert m.peak_tflops('NVIDIA H100 80GB HBM3') == (989.0, 'H100') and m.peak_tflops('NVIDIA H200')[0] == 989.0
    assert m.peak_tflops('NVIDIA H100 PCIe')[0] == 756.0
    assert m.peak_tflops('NVIDIA A100-SXM4-80GB')[0] == 312.0 and m.peak_tflops('NVIDIA A100 80GB PCIe')[0] == 312.0
    assert m.peak_tflops('NVIDIA A10')[0] == 125.0 and m.peak_tflops('NVIDIA L4')[0] == 121.0   # not A100, not L40S
    assert m.peak_tflops('NVIDIA GeForce RTX 4090')[0] == 165.0 and m.peak_tflops('NVIDIA GeForce RTX 3090')[0] == 71.0
    assert m.peak_tflops('NVIDIA H200 NVL')[0] == 835.0 and m.peak_tflops('NVIDIA A10G') == (None, None)
    assert m.peak_tflops('NVIDIA GeForce GTX 1080') == (None, None) and m.peak_tflops(None) == (None, None)
    assert sum(m.BUDGET.values()) < 8 * 60 and tuple(m.BUDGET) == m.PARTS

def test_run_child_kills_on_timeout(tmp_path):
    "A child that hangs is killed (its whole process group) at the timeout."
    m = _module(); t0 = time.time()
    r = m.run_child([sys.executable, '-c', 'import time; print("started", flush=True); time.sleep(120)'], tmp_path/'log', 2)
    assert r['timed_out'] and r['rc'] != 0 and time.time() - t0 < 30
    assert 'started' in (tmp_path/'log').read_text()
    assert m.last_json('noise\n{"a": 1}\n{"b": 2}\ntrailing') == {'b': 2}

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_no_gpu(tmp_path):
    r, rep = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'no CUDA GPU found' in r.stdout
    assert rep['gpu'] is False and rep['ok'] is True and rep['parts'] == {} and rep['card'] is None
    assert rep['torch'] == torch.__version__ and 'cuda' in rep and 'no CUDA GPU' in rep['message']

def test_dry_run_and_workdir_safety(tmp_path):
    "--dry-run prints and writes each part's command and time share, needs no GPU; a foreign --workdir is never removed."
    r, rep = _run(tmp_path, '--dry-run')
    assert r.returncode == 0 and rep['dry_run'] and list(rep['plan']) == ['demo', 'bench_bf16', 'bench_fp16', 'torchrun', 'compile']
    assert sum(v['share_s'] for v in rep['plan'].values()) == pytest.approx(rep['budget_s'])
    b = rep['plan']['bench_fp16']['command']
    assert b[0] == 'eln_nb_bench' and b[b.index('--amp') + 1] == 'fp16' and b[b.index('--size') + 1] == '321'
    assert b[b.index('--backbone') + 1] == 'resnet50' and b[b.index('--eln-backbone') + 1] == 'resnet34' and '--flops' in b
    t = rep['plan']['torchrun']['command']
    assert t[t.index('--nproc_per_node') + 1] == '1' and '--standalone' in t and t[t.index('--sync-bn') + 1] == 'on'
    assert '--compile' in rep['plan']['compile']['command'] and 'eln_nb_bench' in r.stdout
    mine = tmp_path/'precious'; mine.mkdir(); (mine/'keep.txt').write_text('x')
    r = subprocess.run([sys.executable, str(SCRIPT), '--device', 'cpu', '--tiny', '--workdir', str(mine), '--out',
                        str(tmp_path/'x.json')], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 2 and 'not a gpu_check work folder' in r.stderr and (mine/'keep.txt').is_file()

def test_tiny_parts_on_cpu(tmp_path):
    "Every part's runner once on the CPU, tiny. The compile part runs with TORCH_COMPILE_DISABLE=1 (inductor on 2 CPU cores "
    "takes minutes; test_compile_part_really_compiles does it with ELN_NB_SLOW=1), so it covers the plumbing, not inductor."
    env = {**subprocess_env(), 'TORCH_COMPILE_DISABLE': '1'}
    work = tmp_path/'work'
    r, rep = _run(tmp_path, '--device', 'cpu', '--tiny', '--workdir', str(work), '--keep', '--peak-tflops', '1', env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert rep['ok'] and list(rep['parts']) == ['demo', 'bench_bf16', 'bench_fp16', 'torchrun', 'compile']
    for k, v in rep['parts'].items():
        assert v['ok'] and v['error'] is None and 0 < v['wall_s'] <= v['timeout_s'] + 1, (k, v.get('error'))
    assert rep['peak_tflops'] == 1 and rep['peak_source'] == '--peak-tflops' and 'FlopCounterMode' in rep['mfu_note']
    assert rep['wall_s'] < rep['budget_s']
    # (a) the demo ran to the end in the fresh folder
    d = rep['parts']['demo']['report']
    assert d['iterations'] == 3 and set(d['phases']) == {'1a', '1b', '2'} and 0 <= d['student_miou'] <= 1
    assert (work/'demo'/'report.json').is_file() and (work/'.gpu_check_workdir').is_file() and (work/'demo.log').is_file()
    # (b) bf16: three phases with every number; fp16 (with a GradScaler): phase 1a on the CPU
    b = rep['parts']['bench_bf16']
    assert set(b['phases']) == {'1a', '1b', '2'} and b['config']['amp'] == 'bf16' and b['breakdown_phase2_s']['total'] > 0
    for p, v in b['phases'].items():
        assert v['s_per_iter'] > 0 and v['images_per_s'] > 0 and v['peak_rss_mb'] > 0 and v['floor_ratio'] > 0
        assert v['gflop_per_iter'] > 0 and v['mfu'] == pytest.approx(v['tflop_per_s'] / 1)
    f = rep['parts']['bench_fp16']
    assert f['config']['amp'] == 'fp16' and set(f['phases']) == {'1a'} and f['phases']['1a']['mfu'] > 0
    # (c) torchrun, one process: what the run really used is recorded
    t = rep['parts']['torchrun']
    assert t['report']['iterations'] == 3 and t['world_size'] == 1 and t['sync_bn_modules'] == 0 and t['ddp'] is False
    assert 'world size 1' in t['note'] and t['syncbn_function']['ok'] is None      # the SyncBatchNorm kernels are CUDA-only
    assert '--sync-bn' in t['command'] and 'torch.distributed.run' in t['command']
    # (d) --compile
    c = rep['parts']['compile']
    assert '--compile' in c['command'] and c['report']['iterations'] == 3 and 'TORCH_COMPILE_DISABLE' in c['note']
    assert 'all parts passed' in r.stdout and 's/iter' in r.stdout and rep['summary'][0].startswith('gpu_check: cpu')

def test_failing_part_is_recorded(tmp_path):
    "A part that fails is recorded with its error and log tail; the next part still runs; the exit status is 1."
    r, rep = _run(tmp_path, '--device', 'cpu', '--tiny', '--parts', 'torchrun', 'demo', '--torchrun-procs', '0', '--budget', '24')
    assert r.returncode == 1 and rep['ok'] is False
    t = rep['parts']['torchrun']
    assert not t['ok'] and t['error'].startswith('RuntimeError: exit status') and 'log tail' in t['error']
    d = rep['parts']['demo']                       # ran after the failure: finished, or killed at its limit
    assert d['ok'] or 'timed out' in d['error'], d['error']
    assert d['wall_s'] <= d['timeout_s'] + 25
    assert 'FAILED: torchrun' in r.stdout

@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not os.environ.get('ELN_NB_SLOW'), reason='slow (minutes of inductor compilation on CPU): set ELN_NB_SLOW=1')
def test_compile_part_really_compiles(tmp_path):
    "The compile part with inductor really compiling (1 to 7 minutes on 2 CPU cores, as warm the inductor cache is)."
    env = subprocess_env(); env.pop('TORCH_COMPILE_DISABLE', None)
    r, rep = _run(tmp_path, '--device', 'cpu', '--tiny', '--parts', 'compile', '--budget', '1500', env=env, timeout=1600)
    c = rep['parts']['compile']
    assert 'note' not in c and (c['ok'] or 'metrics.jsonl' in c['error'])       # really compiled; a failure says how far it got
    assert r.returncode == 0 and c['ok'], c['error']
