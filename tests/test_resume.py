"Kill a CPU run with SIGKILL in the middle of stage 2, resume it, and compare with an uninterrupted run: bit for bit."
import os, signal, subprocess, sys, time
from pathlib import Path
import torch
from eln_nb.train import train, load_checkpoint
from helpers import tiny_config, tiny_args, assert_same_weights, subprocess_env

# 1a: iterations 0-3, 1b: 4-5, stage 2: 6-11 (teacher starts at 6, student resets at 8 and 10)
KW = dict(pre_epochs=2, eln_epochs=1, epochs=6, ckpt_every=1, keep_every=7, eval_every=5)

def test_kill_and_resume(tmp_path):
    ref = train(tiny_config(tmp_path/'ref', **KW))                  # the uninterrupted run, in this process
    run = tmp_path/'killed'
    cmd = [sys.executable, '-m', 'eln_nb.cli', *tiny_args(run, **KW)]
    p = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while not (run/'iter_0000007.pt').exists():                    # a periodic checkpoint in the middle of stage 2
        assert p.poll() is None, p.stderr.read().decode()[-3000:]
        assert time.time() - t0 < 240, 'no periodic checkpoint within 4 minutes'
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (run/'report.json').exists(), 'the run finished before it was killed'
    killed_at = load_checkpoint(run/'last.pt')['iteration']
    assert 7 <= killed_at < 12
    r = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)   # same command: resumes
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_checkpoint(tmp_path/'ref'/'last.pt'), load_checkpoint(run/'last.pt')
    assert a['iteration'] == b['iteration'] == 12
    assert_same_weights(a['models'], b['models'])                   # student, teacher, aux decoders, ELN, BN buffers
    assert_same_weights(a['optimizer']['state'][0], b['optimizer']['state'][0])
    assert a['rng'][0]['generator'].equal(b['rng'][0]['generator'])
