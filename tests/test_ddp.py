"DDP on 2 CPU processes (gloo): a few iterations of every phase; both ranks end with identical weights."
import os
from pathlib import Path
import torch, torch.multiprocessing as mp
from helpers import tiny_config, free_port, assert_same_weights

def _worker(rank, world, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    from eln_nb.train import Trainer
    import torch.distributed as dist
    t = Trainer(tiny_config(out, deterministic=False, eval_every=3))
    rep = t.fit()
    torch.save({'models': t.m.state_dict(), 'lr': t.opt.param_groups[-1]['lr'], 'miou': rep['student_miou']}, Path(out)/f'rank{rank}.pt')
    dist.destroy_process_group()

def test_two_ranks_identical(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path/f'rank{r}.pt', weights_only=True) for r in (0, 1))
    assert_same_weights(a['models'], b['models'])
    assert a['miou'] == b['miou']                                    # validation is all-reduced
    assert (tmp_path/'report.json').is_file() and (tmp_path/'last.pt').is_file()
    assert not list(tmp_path.glob('*.tmp*'))
    ck = torch.load(tmp_path/'last.pt', weights_only=True)
    assert ck['world_size'] == 2 and len(ck['rng']) == 2            # every rank's random state, for exact resume
