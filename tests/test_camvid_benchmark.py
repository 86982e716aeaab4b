"Smoke test of tools/camvid_benchmark.py: one tiny ELN run on real CamVid, its analysis, the JSON, and resume (skips without the data)."
import json, subprocess, sys
from pathlib import Path
import pytest
from helpers import subprocess_env

SCRIPT = Path(__file__).resolve().parents[1]/'tools'/'camvid_benchmark.py'
TINY = ['--methods', 'eln', '--seeds', '0', '--jobs', '1', '--iters-per-epoch', '1', '--pre-epochs', '1', '--eln-epochs', '1',
        '--epochs', '2', '--resize', '64', '80', '--crop', '64', '--batch-size', '2', '--test-limit', '4', '--analysis-limit', '4']

@pytest.fixture
def camvid(shared):
    p = shared/'data'/'camvid'
    if not (p/'train.txt').is_file(): pytest.skip(f'{p} not found')
    return p

def bench(tmp_path, camvid, *extra):
    cmd = [sys.executable, str(SCRIPT), '--out', str(tmp_path/'runs'), '--json', str(tmp_path/'bench.json'),
           '--data-root', str(camvid), *TINY, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout, json.loads((tmp_path/'bench.json').read_text())

def test_camvid_benchmark_smoke(tmp_path, camvid):
    out, res = bench(tmp_path, camvid)
    run = res['runs']['eln_s0']
    assert run['iterations'] == 2 and 0 <= run['student_miou'] <= 1 and len(run['per_class_iou']) == 11
    assert res['methods']['eln']['student_miou']['n'] == 1 and res['failed'] == []
    assert res['setup']['iterations'] == {'1a': 1, '1b': 1, '2': 0}
    an = run['analysis']                                 # error localization on 4 unlabelled training images
    assert an['images'] == 4 and an['filters']['eln']['flagged'] >= 0
    f = res['error_localization']['eln']['filters']
    assert {'eln', 'conf<0.95', 'conf@eln_rate', 'entropy@eln_rate'} <= set(f)
    assert f['conf@eln_rate']['flagged'] == pytest.approx(f['eln']['flagged'], abs=0.05)   # matched flag rate
    assert 'NaN' not in (tmp_path/'bench.json').read_text()
    assert not (tmp_path/'runs'/'eln_s0'/'best.pt').exists() and (tmp_path/'runs'/'eln_s0'/'last.pt').exists()
    # resumable: a second call trains nothing and rebuilds the same results
    out2, res2 = bench(tmp_path, camvid)
    assert 'train eln_s0' not in out2 and res2['runs']['eln_s0']['student_miou'] == run['student_miou']


def test_merge_keeps_earlier_methods_in_method_order():
    "--merge: the new file gets the earlier file's methods it lacks (runs and error-localization scores too), in METHODS order."
    import importlib.util
    spec = importlib.util.spec_from_file_location('camvid_benchmark', SCRIPT); mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = lambda m, s: {'method': m, 'split_seed': s}
    old = {'created': 'then', 'command': 'old cmd', 'failed': [],
           'methods': {'none': {'v': 1}, 'eln': {'v': 2}}, 'runs': {'none_s0': run('none', 0), 'eln_s0': run('eln', 0)},
           'error_localization': {'eln': {'x': 1}}, 'setup': {'methods': ['none', 'eln']}}
    new = {'created': 'now', 'command': 'new cmd', 'failed': ['ecn_s1: boom'],
           'methods': {'ecn': {'v': 3}, 'eln': {'v': 4}}, 'runs': {'ecn_s0': run('ecn', 0), 'eln_s0': run('eln', 0) | {'new': True}},
           'error_localization': {}, 'setup': {'methods': ['ecn', 'eln']}}
    res = mod.merge(old, new)
    assert list(res['methods']) == ['none', 'eln', 'ecn'] and res['setup']['methods'] == ['none', 'eln', 'ecn']
    assert res['methods']['eln'] == {'v': 4} and res['methods']['none'] == {'v': 1}        # what this run trained wins
    assert list(res['runs']) == ['none_s0', 'eln_s0', 'ecn_s0'] and res['runs']['eln_s0'].get('new')
    assert res['error_localization'] == {} and res['merged']['methods'] == ['none'] and res['failed'] == ['ecn_s1: boom']
