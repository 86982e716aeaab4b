"eln_nb.viz and eln_nb_viz: the explorer driven headlessly, the numbers against metrics, the PNG files of a real checkpoint."
import subprocess, sys
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from eln_nb.data import SyntheticScenes, normalize, colorize
from eln_nb.metrics import error_localization_scores
from eln_nb.stage1 import ELNModels
from eln_nb.viz import (ErrorAnalyzer, ErrorExplorer, ImageResult, run_models, pr_curve, best_f1, eln_panel, aux_panel,
                        overlay, save_panels)
from eln_nb.viz_cli import viz_main, viz_parser
from helpers import tiny_args, subprocess_env

@pytest.fixture(scope='module')
def analyzer():
    torch.manual_seed(0)
    m = ELNModels(5, 'resnet18', eln_backbone='resnet18', pretrained=False, eln_pretrained=False)
    return ErrorAnalyzer(m, SyntheticScenes(n=3, size=32, num_classes=5, seed=0))

def reference_scores(m, sample, decoder, threshold):
    "Independent recomputation: eval-mode forward, ELN on the chosen decoder, error where sigmoid < threshold."
    x = normalize(sample['image'].float()[None] / 255); y = sample['label'][None].long()
    m.eval()
    with torch.no_grad():
        high, low = m.student.encode(x)
        z = m.student.decode(high, low, dropout=False)[0] if decoder == 'main' else m.aux(high, low, dropout=False)[int(decoder[3:]) - 1]
        e = F.interpolate(m.eln(x, z, dropout=False), size=x.shape[-2:], mode='bilinear', align_corners=True)[:, 0]
    m.train()
    return error_localization_scores(torch.sigmoid(e) < threshold, z, y)

def test_explorer_headless(analyzer):
    ex = ErrorExplorer(analyzer)
    seen = {ex.png_bytes}
    for kw in [dict(threshold=0.3), dict(decoder='aux1'), dict(index=2), dict(alpha=0.2), dict(decoder='aux2', threshold=0.7)]:
        ex.set(**kw)
        st = ex.state()
        ref = reference_scores(analyzer.m, analyzer.ds[st['index']], st['decoder'], st['threshold'])
        for k in ('precision', 'recall', 'f1'): assert ex.scores[k] == pytest.approx(ref[k], abs=1e-6), (kw, k)
        assert ex.png_bytes not in seen and ex.panel.value == ex.png_bytes, kw      # the figure changed
        seen.add(ex.png_bytes)
        assert f"{ex.scores['f1']:.3f}" in ex.metrics.value
    assert ex.state() == {'index': 2, 'decoder': 'aux2', 'threshold': 0.7, 'alpha': 0.2}

def test_official_bugs_fixed(analyzer):
    m = analyzer.m.train()
    x = normalize(analyzer.ds[0]['image'].float()[None] / 255)
    a, b = run_models(m, x), run_models(m, x)
    torch.testing.assert_close(a[0]['main'], b[0]['main'], rtol=0, atol=0)          # eval mode: no dropout, running BN stats
    assert m.training and not a[1]['aux1'].requires_grad                             # mode restored, no gradients
    r = analyzer[0]
    torch.testing.assert_close(r.rgb, analyzer.ds[0]['image'].permute(1, 2, 0).float() / 255, atol=1e-5, rtol=0)  # RGB, per channel
    col = overlay(r.rgb, colorize(r.label, analyzer.info.palette), 1.0)             # palette colours, in RGB order
    assert np.allclose(col[r.label.numpy() == 1], np.array(analyzer.info.palette[1]) / 255)

def test_pr_curve_vectorised_matches_thresholding(analyzer):
    r = analyzer[1]
    for method, score in [('eln', r.eln_error_prob('main')), ('entropy', r.entropy('main'))]:
        c = analyzer.curves('main', [1], methods=(method,))[method]
        v, err = r.valid(), r.error('main')
        for i in (0, len(c['threshold']) // 2, len(c['threshold']) - 1):
            pos = score.double() >= c['threshold'][i]
            tp, k = (pos & err & v).sum().item(), (pos & v).sum().item()
            assert c['precision'][i].item() == pytest.approx(tp / k)
            assert c['recall'][i].item() == pytest.approx(tp / max(1, err.sum().item()))
    # the pooled ELN scores at a threshold equal the point of the ELN curve just above 1 - threshold
    c, p = analyzer.curves('aux1', methods=('eln',))['eln'], analyzer.pooled('aux1', 0.5)
    i = int((c['threshold'] > 0.5).sum()) - 1
    assert c['f1'][i].item() == pytest.approx(p['f1_total'], abs=1e-3)

def test_figures(analyzer):
    f = eln_panel(analyzer[0], analyzer.info, 'main', 0.5)
    assert len([ax for ax in f.axes if ax.images]) == 8
    names = [t.get_text() for t in f.legends[0].get_texts()]
    assert names[:5] == list(analyzer.info.classes) and 'void / rejected' in names
    assert len(aux_panel(analyzer[0], analyzer.info).axes) == 3 * 3

def test_viz_help():
    h = viz_parser().format_help()
    for opt in ('--ckpt', '--data', '--out', '--n'): assert opt in h
    r = subprocess.run([sys.executable, '-m', 'eln_nb.viz_cli', '--help'], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert r.returncode == 0 and '--ckpt' in r.stdout, r.stderr

def test_viz_cli_on_a_trained_checkpoint(tmp_path, capsys):
    "A tiny demo-preset run (eln_nb_train), then eln_nb_viz on its last.pt: 2 panels per image + 1 curve, sensible sizes."
    from eln_nb.cli import train_main
    run = tmp_path/'run'
    assert train_main(tiny_args(run)) == 0
    capsys.readouterr()
    out, n = tmp_path/'png', 3
    assert viz_main(['--ckpt', str(run/'last.pt'), '--data', 'synthetic', '--out', str(out), '--n', str(n), '--dpi', '50']) == 0
    o = capsys.readouterr().out
    assert 'best F1 over thresholds' in o and o.count('ELN@0.50') == n
    files = sorted(out.glob('*.png'))
    assert len(files) == 2 * n + 1
    assert len(list(out.glob('*_eln.png'))) == n and len(list(out.glob('*_aux.png'))) == n and (out/'pr_curve.png').is_file()
    for p in files:
        w, h = Image.open(p).size
        assert p.stat().st_size > 5_000 and 250 <= w <= 700 and 200 <= h <= 500, (p.name, w, h, p.stat().st_size)

def test_viz_cli_errors(tmp_path, capsys):
    assert viz_main(['--ckpt', str(tmp_path/'missing.pt'), '--out', str(tmp_path/'o')]) == 2
    assert 'not found' in capsys.readouterr().err
    with pytest.raises(SystemExit): viz_main(['--out', str(tmp_path/'o')])              # --ckpt is required
