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
