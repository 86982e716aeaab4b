"tools/camvid_benchmark.py on real CamVid at a tiny scale: one stage 1, every branch from it, Table 4, the JSON, resume."
import importlib.util, json, subprocess, sys
from pathlib import Path
import pytest, torch
from helpers import subprocess_env

SCRIPT = Path(__file__).resolve().parents[1]/'tools'/'camvid_benchmark.py'
TINY = ['--seeds', '0', '--jobs', '2', '--iters-per-epoch', '2', '--pre-epochs', '1', '--eln-epochs', '1', '--stage2-epochs', '1',
        '--resize', '64', '80', '--crop', '64', '--batch-size', '2', '--test-limit', '4', '--analysis-limit', '8']

def load_tool():
    spec = importlib.util.spec_from_file_location('camvid_benchmark', SCRIPT); mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod); return mod

@pytest.fixture
def camvid(shared):
    p = shared/'data'/'camvid'
    if not (p/'train.txt').is_file(): pytest.skip(f'{p} not found')
    return p

def bench(tmp_path, camvid, *extra):
    cmd = [sys.executable, str(SCRIPT), '--out', str(tmp_path/'runs'), '--json', str(tmp_path/'bench.json'),
           '--data-root', str(camvid), *TINY, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout, json.loads((tmp_path/'bench.json').read_text())

def test_paired_benchmark(tmp_path, camvid):
    out, res = bench(tmp_path, camvid)
    assert res['seeds'] == [0] and res['failed'] == []
    assert set(res['paired']) == {'supervised', 'none', 'threshold', 'eln', 'eln_cal', 'ecn'}
    assert all(set(v) == {'0'} and 0 <= v['0'] <= 1 for v in res['paired'].values())
    assert res['differences']['eln-threshold']['per_seed']['0'] == pytest.approx(res['paired']['eln']['0'] - res['paired']['threshold']['0'], abs=1e-4)
    assert set(res['table4']) == {'eln_filter_bn', 'eln_eval_bn', 'confidence', 'entropy'}
    for t in res['table4'].values(): assert {'ap', 'precision', 'recall', 'f1'} <= set(t) and 0 <= t['ap'] <= 1
    runs = tmp_path/'runs'
    for b in ('supervised', 'none', 'threshold', 'eln', 'eln_cal'):     # every branch starts from the one stage-1 checkpoint
        assert f"--init-from {runs/'stage1_s0'/'last.pt'}" in (runs/f'{b}_s0'/'command.txt').read_text()
    assert f"--init-from {runs/'stage1_s0'/'iter_0000002.pt'}" in (runs/'ecn_s0'/'command.txt').read_text()
    cal = res['stage1']['0']['calibration']
    assert f"--eln-threshold {cal['threshold']!r}" in (runs/'eln_cal_s0'/'command.txt').read_text()
    aux = res['stage1']['0']['aux']
    assert aux['records'] >= 1 and len(aux['decoders']) == 2 and aux['chance_loss'] == pytest.approx(2.3979, abs=1e-3)
    assert all(0 <= d['active'] <= 1 for d in aux['decoders'])
    s1 = json.loads((runs/'stage1_s0'/'report.json').read_text())
    for b in res['paired']:                                          # the branches' stage 1 is the shared one, not retrained
        rep = json.loads((runs/f'{b}_s0'/'report.json').read_text())
        assert rep['phases']['1a'] == s1['phases']['1a'] and rep['iterations'] == 6
    assert 'NaN' not in (tmp_path/'bench.json').read_text()
    assert not (runs/'threshold_s0'/'last.pt').exists() and (runs/'stage1_s0'/'last.pt').exists()
    ex = dict(__import__('numpy').load(runs/'eln_s0'/'example.npz'))
    assert ex['image'].shape == (64, 80, 3) and ex['eln'].shape == (64, 80)
    out2, res2 = bench(tmp_path, camvid)                             # resumable: nothing runs again
    assert 'train ' not in out2 and res2['paired'] == res['paired']

def test_scores():
    mod = load_tool()
    pos = torch.tensor([True, False, True, False, False])
    assert mod._ap(torch.tensor([.9, .1, .8, .2, .3]), pos) == 1.0          # perfect ranking
    assert mod._ap(torch.tensor([.1, .9, .2, .8, .7]), pos) == pytest.approx((1/4 + 2/5) / 2, abs=1e-4)
    assert mod._top(torch.arange(10.), 0.3).tolist() == [False] * 7 + [True] * 3
    p = mod._prf(torch.tensor([True, True, False, False]), torch.tensor([True, False, True, False]))
    assert (p['precision'], p['recall'], p['f1'], p['kept_accuracy']) == (0.5, 0.5, 0.5, 0.5)

def test_calibration_split_is_never_the_test_split(tmp_path, camvid):
    r = subprocess.run([sys.executable, str(SCRIPT), '--data-root', str(camvid), '--calib-split', 'test', '--out', str(tmp_path)],
                       capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert r.returncode != 0 and 'choose nothing on test' in r.stderr

def test_filter_mode_scores_what_stage2_filters():
    "The analysis's filter mode is the stage-2 filter: train-mode BatchNorm for teacher and ELN, then running stats restored."
    from eln_nb.stage1 import ELNModels, MethodConfig
    from eln_nb.stage2 import teacher_targets
    from eln_nb.losses import resize_to
    mod = load_tool()
    torch.manual_seed(0)
    m = ELNModels(3, 'resnet18', eln_backbone='resnet18', pretrained=False, eln_pretrained=False, filter='eln')
    x = torch.randn(4, 3, 32, 32)
    m.train()
    with torch.no_grad():                                           # a few training-mode passes: running stats != init
        for _ in range(3): teacher_targets(m, torch.randn(4, 3, 32, 32), MethodConfig())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        z, e_f, e_e, z_ev = mod.teacher_and_eln(m, x)
        for k, v in m.state_dict().items(): assert torch.equal(v, before[k]), k    # nothing moved
        m.train()
        z_t, _, keep = teacher_targets(m, x, MethodConfig())          # what stage 2 computes on this batch
    m.load_state_dict(before)
    torch.testing.assert_close(z, resize_to(z_t.float(), (32, 32)))
    with torch.no_grad():
        m.train(); e = m.eln(x, z_t, dropout=False).float(); m.load_state_dict(before)
    torch.testing.assert_close(e_f, resize_to(e, (32, 32))[:, 0].sigmoid())
    assert not torch.allclose(e_f, e_e)                             # eval mode is another function
