"eln_nb_bench: the JSON report of a tiny run (in-process and with one subprocess per phase), the table, bad options."
import json, subprocess, sys
import pytest
from eln_nb.bench import bench_main, bench_parser, BenchConfig, BREAKDOWN, PHASES, ANCHOR, is_anchor_preset, summarize, format_table
from helpers import subprocess_env

TINY = ['--size', '48', '--backbone', 'resnet18', '--eln-backbone', 'resnet18', '--num-classes', '3', '--threads', '1',
        '--iters', '2', '--warmup', '1', '--breakdown-iters', '1', '--no-calibrate']

def _run_json(capsys, *extra):
    assert bench_main(['--json', *TINY, *extra]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    return json.loads(out[0])

def _check_report(rep, phases=PHASES):
    for k in ('phase1a_median_s', 'phase1b_median_s', 'phase2_median_s', 'floor_ratio', 'peak_memory_mb'):
        assert isinstance(rep[k], float) and rep[k] > 0, k
    for k in ('config', 'torch', 'threads', 'cpu_model', 'amx', 'loadavg', 'loadavg_start', 'breakdown', 'floor_ratios', 'phases'):
        assert k in rep, k
    assert rep['threads'] == 1 and rep['device'] == 'cpu'
    for p in phases:
        r = rep['phases'][p]
        assert 0 < r['min_s'] <= r['median_s'] and len(r['times_s']) == 2 and len(r['floor_times_s']) == 2
        assert r['floor_median_s'] > 0 and r['images_per_s'] > 0 and r['peak_memory_mb'] > 0
        assert rep[f'phase{p}_median_s'] == r['median_s'] and rep['floor_ratios'][p] == pytest.approx(r['median_s'] / r['floor_median_s'])
    assert rep['floor_ratio'] == max(rep['floor_ratios'].values())
    bd = rep['breakdown']
    assert set(bd) == {*BREAKDOWN, 'total'} and all(bd[k] >= 0 for k in BREAKDOWN)
    assert sum(bd[k] for k in BREAKDOWN) == pytest.approx(bd['total'], rel=1e-6)
    assert bd['student_fwd_bwd'] > 0 and bd['eln'] > 0 and bd['teacher_fwd'] > 0 and bd['optimizer'] > 0
    # the instrumented iteration is about as long as the uninstrumented one (loose: the machine is shared)
    assert 0.3 < bd['total'] / rep['phase2_median_s'] < 3
    assert rep['anchor_ratio'] is None        # not the anchor's preset
    json.dumps(rep)                           # serialisable

def test_json_in_process(capsys):
    rep = _run_json(capsys, '--isolate', 'off', '--data', 'synthetic-tensors')
    _check_report(rep)
    assert rep['peak_memory_isolated'] is False and rep['config']['data'] == 'synthetic-tensors'
    assert rep['breakdown']['data'] < 0.05 * rep['breakdown']['total']   # fixed tensors: no data wait

def test_json_isolated_with_loader_and_flops(capsys):
    "One subprocess per phase (per-phase RSS peaks), batches from make_loader, FLOPs counted."
    rep = _run_json(capsys, '--isolate', 'on', '--data', 'loader', '--flops')
    _check_report(rep)
    assert rep['peak_memory_isolated'] is True
    g = {p: rep['phases'][p]['gflop'] for p in PHASES}
    assert 0 < g['1a'] < g['1b'] < g['2']
    assert rep['breakdown']['data'] > 0

def test_table_and_options(capsys):
    assert bench_main([*TINY, '--isolate', 'off', '--phases', '1a', '--no-floor', '--data', 'synthetic-tensors']) == 0
    out = capsys.readouterr().out
    assert 'median s' in out and 'floor ratio' in out and '\n1a ' in out and '\n1b ' not in out
    assert 'anchor: not comparable' in out

def test_anchor_preset_and_bad_options():
    assert is_anchor_preset(BenchConfig()) and is_anchor_preset(BenchConfig(amp='bf16', channels_last=True))
    assert not is_anchor_preset(BenchConfig(size=64)) and not is_anchor_preset(BenchConfig(threads=1))
    for bad in (['--amp', 'fp8'], ['--phases', '3'], ['--data', 'camvid'], ['--iters', 'x']):
        with pytest.raises(SystemExit): bench_parser().parse_args(bad)

def test_help_lists_the_options():
    h = bench_parser().format_help()
    for opt in ('--iters', '--warmup', '--size', '--batch', '--backbone', '--eln-backbone', '--num-classes', '--amp',
                '--channels-last', '--threads', '--device', '--phases', '--json', '--data', '--isolate', '--flops'):
        assert opt in h, opt


def test_anchor_ratios_adjusted_for_machine_speed():
    "At the anchor preset: raw ratios, ratios divided by the machine factor, and both target verdicts in the table."
    times = {'1a': 1.0, '1b': 4.0, '2': 8.0}
    ph = {p: {'median_s': t, 'min_s': t * 0.9, 'times_s': [t], 'images_per_s': 2 / t, 'peak_memory_mb': 1024.0} for p, t in times.items()}
    info = {'device': 'cpu', 'reference_s': 2.5, 'torch': 'x', 'cpu_model': 'x', 'amx': True, 'loadavg': [1, 1, 1],
            'loadavg_start': [1, 1, 1]}
    rep = summarize(BenchConfig(amp='bf16', channels_last=True), {'phases': ph, 'breakdown': None, 'isolated': True, 'threads': 2}, info)
    assert rep['machine_factor'] == pytest.approx(2.5 / ANCHOR['reference_s'])
    for p, t in times.items():
        assert rep['anchor_ratio'][p] == pytest.approx(t / ANCHOR['median_s'][p])
        assert rep['anchor_ratio_adjusted'][p] == pytest.approx(t / ANCHOR['median_s'][p] / rep['machine_factor'])
    out = format_table(rep)
    assert 'factor 1.25' in out and 'target: <= 0.4x' in out
    raw_ok = max(rep['anchor_ratio'].values()) <= 0.4
    assert ('NOT met (adjusted' in out) == (not raw_ok)
    info['reference_s'] = None
    rep = summarize(BenchConfig(), {'phases': ph, 'breakdown': None, 'isolated': True, 'threads': 2}, info)
    assert rep['machine_factor'] is None and rep['anchor_ratio_adjusted'] is None and 'factor' not in format_table(rep)
