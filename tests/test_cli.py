"The console scripts: --help, --dry-run of every preset, a tiny training run, evaluation in three modes, errors."
import json, subprocess, sys
from dataclasses import fields
import pytest
from eln_nb.cli import train_main, eval_main, config_parser, parse_config, plan
from eln_nb.train import TrainConfig, PRESETS, make_config
from helpers import tiny_args, subprocess_env

def test_help_documents_every_option():
    h = config_parser().format_help()
    for f in fields(TrainConfig): assert '--' + f.name.replace('_', '-') in h, f.name
    for opt in ('--preset', '--resume', '--dry-run'): assert opt in h

def test_overrides():
    cfg, _ = parse_config(['--preset', 'voc-r50', '--split', '20', '--split-seed', '2', '--amp', 'fp16', '--no-hflip', '--alphas', '10', '30'])
    assert (cfg.split, cfg.split_seed, cfg.amp, cfg.hflip, cfg.alphas, cfg.backbone) == (20, 2, 'fp16', False, (10., 30.), 'resnet50')
    with pytest.raises(SystemExit): parse_config(['--no-such-option', '1'])

@pytest.mark.parametrize('preset', list(PRESETS))
def test_dry_run(preset, capsys):
    assert train_main(['--preset', preset, '--dry-run']) == 0
    o = capsys.readouterr().out
    assert 'phases:' in o and 'networks:' in o and 'M parameters' in o and 'data:' in o

def test_dry_run_console_script():
    "The installed entry point (python -m eln_nb.cli is what torchrun starts)."
    r = subprocess.run([sys.executable, '-m', 'eln_nb.cli', '--preset', 'voc-r101', '--split', '4', '--dry-run'],
                       capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert '18620' in r.stdout and 'resnet101' in r.stdout

def test_train_and_eval(tmp_path, capsys):
    out = tmp_path/'run'
    assert train_main(tiny_args(out)) == 0
    o = capsys.readouterr().out
    assert 'mIoU' in o and 'ELN error localization' in o              # the final table
    res = tmp_path/'eval.json'
    assert eval_main(['--ckpt', str(out/'last.pt'), '--mode', 'full', 'resize', 'slide', '--resize', '48', '--window', '24', '--json', str(res)]) == 0
    r = json.loads(res.read_text())['results']
    assert set(r) == {'full', 'resize', 'slide'}
    for v in r.values(): assert 0 <= v['student_miou'] <= 1 and 'eln_f1' in v and len(v['per_class_iou']) == 5

def test_eval_bad_checkpoint(tmp_path, capsys):
    (tmp_path/'x.pt').write_bytes(b'\x00' * 10)
    assert eval_main(['--ckpt', str(tmp_path/'x.pt')]) == 2
    assert 'x.pt' in capsys.readouterr().err
