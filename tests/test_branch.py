"Branching (`init_from`): a stage-2 run started from another run's stage-1 checkpoint continues exactly as that run would."
import pytest, torch
from eln_nb.train import train, load_checkpoint, CheckpointError
from helpers import tiny_config, assert_same_weights

# 1a: iterations 0-1, 1b: 2-3, stage 2: 4-7
KW = dict(pre_epochs=1, eln_epochs=1, epochs=4, keep_every=2)

@pytest.fixture(scope='module')
def stage1(tmp_path_factory):
    "A run that stops at the end of stage 1 (keeping its end-of-1a checkpoint) and the same run carried to the end."
    d = tmp_path_factory.mktemp('branch')
    train(tiny_config(d/'s1', **{**KW, 'epochs': 2}))
    train(tiny_config(d/'full', **KW))
    return d

def test_branch_equals_the_straight_run(stage1, tmp_path):
    rep = train(tiny_config(tmp_path/'b', init_from=str(stage1/'s1'/'last.pt'), **KW))
    a, b = load_checkpoint(stage1/'full'/'last.pt'), load_checkpoint(tmp_path/'b'/'last.pt')
    assert a['iteration'] == b['iteration'] == 8
    assert_same_weights(a['models'], b['models'])               # student, teacher, aux decoders, ELN, BN buffers
    for i in a['optimizer']['state']: assert_same_weights(a['optimizer']['state'][i], b['optimizer']['state'][i])
    assert set(rep['phases']) == {'1a', '1b', '2'}              # the whole run's accounting, stage 1 included

def test_branch_changes_the_filter(stage1, tmp_path):
    s1 = load_checkpoint(stage1/'s1'/'last.pt')
    rep = train(tiny_config(tmp_path/'thr', init_from=str(stage1/'s1'/'last.pt'), filter='threshold', **KW))
    ck = load_checkpoint(tmp_path/'thr'/'last.pt')
    assert rep['iterations'] == 8 and not any(k.startswith(('eln.', 'aux.')) for k in ck['models'])
    sup = train(tiny_config(tmp_path/'sup', init_from=str(stage1/'s1'/'last.pt'), filter='supervised', **KW))
    assert sup['iterations'] == 8 and 'st' not in sup['phases']['2'] and 'st' in rep['phases']['2']
    st = load_checkpoint(tmp_path/'sup'/'last.pt')['models']     # same stage 1, different stage 2: different student
    assert not torch.equal(st['student.decoder.classifier.2.weight'], ck['models']['student.decoder.classifier.2.weight'])

def test_ecn_branches_from_the_end_of_1a(stage1, tmp_path):
    ck1a = stage1/'s1'/'iter_0000002.pt'
    assert load_checkpoint(ck1a)['iteration'] == 2
    rep = train(tiny_config(tmp_path/'ecn', init_from=str(ck1a), filter='ecn', **KW))
    assert rep['iterations'] == 8
    ck = load_checkpoint(tmp_path/'ecn'/'last.pt')
    assert 'eln' in rep['phases']['1b'] and ck['config']['filter'] == 'ecn'
    assert any(k.startswith('eln.') for k in ck['models'])      # the ECN's own head, trained in its own 1b

def test_branch_past_the_end_is_refused(stage1, tmp_path):
    with pytest.raises(CheckpointError, match='past this run'):
        train(tiny_config(tmp_path/'x', init_from=str(stage1/'full'/'last.pt'), **{**KW, 'epochs': 2}))
