"""pls-eval: ratio parsing, a small end-to-end run with outputs, and error exits."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

from pls_perception.io.datasets import CIFAR10_CLASSES
from pls_perception.tools.eval_cli import COLUMNS, main, parse_ratios
from tiny_cifar import make_tiny_cifar


def test_parse_ratios() -> None:
    assert parse_ratios('1.0, 0.5,0.1') == [1.0, 0.5, 0.1]
    assert parse_ratios('1/0.5/0.5/1,0.3') == [(1.0, 0.5, 0.5, 1.0), 0.3]
    for bad in ('', 'a', '0', '1.5', '0.5/0'):
        with pytest.raises(ValueError):
            parse_ratios(bad)


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / 'images'
    for label, name in enumerate(('airplane', 'cat', 'truck')):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new('RGB', (32, 32), (label * 90, i * 60, 30)).save(root / name / f'{i}.png')
    return root


def test_end_to_end_with_bn_recalibration(tmp_path: Path, image_folder: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / 'out'
    calibration = make_tiny_cifar(tmp_path / 'tiny.tar.gz', per_class=4)
    with pytest.warns(UserWarning, match='RANDOM'):
        code = main(['--weights', 'random', '--allow-random', '--arch', 'resnet18',
                     '--data', str(image_folder), '--ratios', '0.5,1/0.5/1/0.5',
                     '--bn-recalibration', '8', '--calibration-data', str(calibration),
                     '--bn-batch-size', '4', '--latency-runs', '2', '--limit', '6',
                     '--threads', '1', '--no-progress', '--out', str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    assert 'acc%BN' in stdout and 'params M' in stdout
    with open(out / 'table1.csv') as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert [r['ratio'] for r in rows] == ['1', '0.5', '1/0.5/1/0.5']   # 1.0 added as reference
    assert all(r['n_images'] == '6' for r in rows)
    assert float(rows[0]['accuracy_loss_pp']) == 0.0 and rows[0]['paper_params_m'] == ''
    summary = json.loads((out / 'table1.json').read_text())
    assert summary['n_images'] == 6 and summary['bn_recalibration_images'] == 8
    assert summary['rows'][1]['accuracy_bn'] is not None
    assert summary['rows'][1]['params'] < summary['rows'][0]['params']
    assert (out / 'table1.png').stat().st_size > 10_000
    assert (out / 'bn_states.pt').is_file()


def test_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(['--weights', str(tmp_path / 'missing.pt'), '--out', str(tmp_path)]) == 2
    assert 'missing.pt' in capsys.readouterr().err
    assert main(['--weights', 'random', '--ratios', 'x', '--out', str(tmp_path)]) == 2
    with pytest.warns(UserWarning, match='RANDOM'):
        assert main(['--weights', 'random', '--allow-random', '--arch', 'resnet18',
                     '--data', str(tmp_path / 'nothing.tar.gz'), '--out', str(tmp_path)]) == 2


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / 'pls-eval'
    command = [str(script)] if script.is_file() else [
        sys.executable, '-m', 'pls_perception.tools.eval_cli']
    proc = subprocess.run([*command, '--help'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and '--bn-recalibration' in proc.stdout


def _fake_run(directory: Path, rows: list[dict], bn_images: int) -> Path:
    directory.mkdir(parents=True)
    base = {key: None for key in COLUMNS}
    summary = {'arch': 'resnet152', 'n_images': 100, 'bn_recalibration_images': bn_images,
               'rows': [dict(base, n_images=100, params=int(r['params_m'] * 1e6), macs=1,
                             compression_pct=0.0, **r) for r in rows]}
    (directory / 'table1.json').write_text(json.dumps(summary))
    return directory


def test_merge_plain_and_bn_only_runs(tmp_path: Path) -> None:
    plain = _fake_run(tmp_path / 'plain', [
        {'ratio': '1', 'accuracy': 0.8, 'loss': 0.5, 'params_m': 58.0},
        {'ratio': '0.5', 'accuracy': 0.4, 'loss': 1.5, 'params_m': 30.0}], 0)
    bn_a = _fake_run(tmp_path / 'bn_a', [
        {'ratio': '0.5', 'accuracy_bn': 0.6, 'loss_bn': 1.0, 'params_m': 30.0}], 64)
    bn_b = _fake_run(tmp_path / 'bn_b', [
        {'ratio': '0.1', 'accuracy_bn': 0.2, 'loss_bn': 2.0, 'params_m': 10.0}], 64)
    out = tmp_path / 'merged'
    assert main(['--merge', str(plain), str(bn_a), str(bn_b), '--out', str(out)]) == 0
    rows = json.loads((out / 'table1.json').read_text())['rows']
    assert [r['ratio'] for r in rows] == ['1', '0.5', '0.1']
    assert rows[0]['accuracy_bn'] == 0.8   # ratio 1 skips nothing: recalibration is a no-op
    assert rows[1]['accuracy'] == 0.4 and rows[1]['accuracy_bn'] == 0.6
    assert rows[1]['accuracy_loss_bn_pp'] == pytest.approx(20.0)
    assert rows[2]['accuracy'] is None and rows[2]['accuracy_loss_bn_pp'] == pytest.approx(60.0)
    assert (out / 'table1.png').is_file() and (out / 'table1.csv').is_file()
    other = _fake_run(tmp_path / 'other', [{'ratio': '0.3', 'params_m': 20.0}], 0)
    summary = json.loads((other / 'table1.json').read_text())
    summary['rows'][0]['n_images'] = 5
    (other / 'table1.json').write_text(json.dumps(summary))
    assert main(['--merge', str(plain), str(other), '--out', str(out)]) == 2


def test_compare_runs_of_different_weights(tmp_path: Path) -> None:
    reference = _fake_run(tmp_path / 'ref', [
        {'ratio': '1', 'accuracy': 0.8, 'params_m': 58.0},
        {'ratio': '0.5', 'accuracy': 0.4, 'accuracy_bn': 0.6, 'params_m': 30.0}], 64)
    tuned = _fake_run(tmp_path / 'tuned', [
        {'ratio': '1', 'accuracy': 0.79, 'params_m': 58.0},
        {'ratio': '0.5', 'accuracy': 0.75, 'params_m': 30.0}], 0)
    for directory, name in ((reference, 'ref.pt'), (tuned, 'resnet152_pls.pt')):
        summary = json.loads((directory / 'table1.json').read_text())
        (directory / 'table1.json').write_text(json.dumps(dict(summary, weights=name)))
    out = tmp_path / 'compare'
    assert main(['--compare', f'reference={reference}', str(tuned), '--out', str(out)]) == 0
    with open(out / 'compare.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['run'], r['ratio'], r['accuracy']) for r in rows] == [
        ('reference', '1', '0.8'), ('reference', '0.5', '0.4'),
        ('resnet152_pls', '1', '0.79'), ('resnet152_pls', '0.5', '0.75')]
    assert rows[1]['accuracy_bn'] == '0.6' and rows[3]['accuracy_bn'] == ''
    assert (out / 'accuracy_vs_macs.png').stat().st_size > 10_000


def test_compare_rejects_what_does_not_compare(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    small = _fake_run(tmp_path / 'small', [{'ratio': '1', 'accuracy': 0.8, 'params_m': 1.0}], 0)
    summary = json.loads((small / 'table1.json').read_text())
    other = tmp_path / 'other'
    other.mkdir()
    rows = [dict(summary['rows'][0], n_images=5)]
    (other / 'table1.json').write_text(json.dumps(dict(summary, weights='b.pt', n_images=5,
                                                       rows=rows)))
    (small / 'table1.json').write_text(json.dumps(dict(summary, weights='a.pt')))
    out = str(tmp_path / 'out')
    assert main(['--compare', str(small), str(other), '--out', out]) == 2
    assert 'different image counts' in capsys.readouterr().err
    assert main(['--compare', str(tmp_path / 'missing'), '--out', out]) == 2
    assert 'no table1.json' in capsys.readouterr().err
    (other / 'table1.json').write_text(json.dumps({'weights': 'b.pt'}))
    assert main(['--compare', str(other), '--out', out]) == 2
    assert "not a pls-eval table1.json (missing 'n_images')" in capsys.readouterr().err


def test_onnxruntime_int8_run_and_its_errors(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    tiny = make_tiny_cifar(tmp_path / 'tiny.tar.gz', classes=CIFAR10_CLASSES, per_class=2)
    common = ['--weights', 'random', '--allow-random', '--arch', 'resnet18', '--data', str(tiny),
              '--calibration-data', str(tiny), '--ratios', '0.5', '--latency-runs', '2',
              '--threads', '1', '--no-progress', '--onnx-cache-dir', str(tmp_path / 'cache')]
    for extra, error in ((['--precision', 'int8'], '--precision int8 needs --engine onnxruntime'),
                         (['--engine', 'onnxruntime', '--bn-recalibration', '8'],
                          '--bn-recalibration needs --engine torch'),
                         (['--engine', 'onnxruntime', '--precision', 'int8',
                           '--int8-calibration-images', '30'], 'only 20 train images')):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', UserWarning)   # random weights (when loaded)
            assert main([*common, *extra, '--out', str(tmp_path / 'bad')]) == 2
        assert error in capsys.readouterr().err
    out = tmp_path / 'int8'
    with pytest.warns(UserWarning, match='RANDOM'):
        assert main([*common, '--engine', 'onnxruntime', '--precision', 'int8',
                     '--int8-calibration-images', '20', '--out', str(out)]) == 0
    summary = json.loads((out / 'table1.json').read_text())
    assert (summary['engine'], summary['precision']) == ('onnxruntime', 'int8')
    assert summary['int8_calibration_images'] == 20 and summary['n_images'] == 20
    assert [r['ratio'] for r in summary['rows']] == ['1', '0.5']
    assert all(0 <= r['accuracy'] <= 1 and r['latency_ms'] > 0 for r in summary['rows'])
