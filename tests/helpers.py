"Helpers for the run-loop tests: a tiny CPU config, weight comparison, a free port."
import os, socket, sys
import torch
from eln_nb.train import make_config

def tiny_config(out, **kw):
    "32-pixel synthetic scenes, ResNet-18 everywhere, 2+2 batches, a few iterations per phase, deterministic on one thread."
    base = dict(synthetic_n=8, synthetic_val_n=4, synthetic_size=32, crop=(32,), split=2, window_size=4, windows=2,
                iters_per_epoch=2, pre_epochs=1, eln_epochs=1, epochs=3, batch_size=2, unlabelled_batch_size=2,
                eval_every=0, ckpt_every=2, keep_every=0, log_every=1, amp='off', threads=1, num_workers=0,
                progress=False, deterministic=True, out=str(out))
    return make_config('demo', **{**base, **kw})

def tiny_args(out, **kw):
    "The same tiny config as command-line arguments."
    c = tiny_config(out, **kw); args = ['--preset', 'demo']
    for k, v in c.__dict__.items():
        opt = '--' + k.replace('_', '-')
        if isinstance(v, bool): args.append(opt if v else '--no-' + k.replace('_', '-'))
        elif isinstance(v, tuple): args += [opt, *map(str, v)]
        else: args += [opt, str(v)]
    return args

def assert_same_weights(a:dict, b:dict, exact=True):
    "Every tensor of state dict `a` equals (exactly or closely) the one of `b`."
    assert a.keys() == b.keys()
    for k in a:
        if exact: assert torch.equal(a[k], b[k]), f"{k} differs: max |diff| {(a[k].double() - b[k].double()).abs().max()}"
        else: torch.testing.assert_close(a[k], b[k], msg=k)

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def subprocess_env():
    "Environment for child Python processes: one thread, the parent's import path."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': os.pathsep.join(p for p in [os.environ.get('PYTHONPATH', '')] if p)}
    return env
