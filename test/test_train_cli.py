"""pls-train: a tiny run whose outputs pls-eval and the node's loaders accept, and its refusals."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from tiny_cifar import make_tiny_cifar

from pls_perception.io.file_inputs import sha256_of
from pls_perception.skipping.bn_recalibration import load_bn_states
from pls_perception.skipping.weights import load_model
from pls_perception.tools.eval_cli import main as eval_main
from pls_perception.tools.train_cli import main, parse_ratios


@pytest.fixture(scope='module')
def tiny_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_cifar(tmp_path_factory.mktemp('data') / 'tiny.tar.gz', per_class=12)


@pytest.fixture(scope='module')
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('weights') / 'resnet18.pt'
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    return path


def _args(tar: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return ['--weights', str(weights), '--arch', 'resnet18', '--data', str(tar),
            '--val-images', '6', '--ratios', '0.5', '--steps', '4', '--batch-size', '8',
            '--lr', '0.003', '--threads', '1', '--checkpoint-every', '2', '--eval-every', '2',
            '--no-progress', '--out', str(out), *extra]


def test_parse_ratios_adds_the_teacher() -> None:
    assert parse_ratios('0.5, 0.1,0.5') == (1.0, 0.5, 0.1)
    with pytest.raises(ValueError, match='numbers'):
        parse_ratios('0.5,x')


def test_end_to_end_outputs_load_in_the_other_tools(tiny_tar: Path, weights: Path,
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / 'train'
    args = _args(tiny_tar, weights, out, '--per-ratio-bn', '--bn-calibration-images', '12')
    assert main(args) == 0
    assert ' start % ' in capsys.readouterr().out
    summary = json.loads((out / 'train_summary.json').read_text())
    trained = Path(summary['weights_file'])
    assert trained == out / 'resnet18_pls.pt' and sha256_of(trained) == summary['weights_sha256']
    assert summary['steps'] == 4 and summary['command'][0] == 'pls-train'
    assert set(summary['held_out_accuracy_final']) == {'1', '0.5'}
    assert summary['config']['seed'] == 0 and summary['train_images_per_s'] > 0
    with open(out / 'learning_curve.csv') as f:
        assert [row['step'] for row in csv.DictReader(f)] == ['0', '2', '4']
    curve_png = out / 'learning_curve.png'
    assert curve_png.stat().st_size > 10_000
    curve_png.unlink()
    assert main(['--plot-only', '--out', str(out)]) == 0 and curve_png.is_file()
    assert main(['--plot-only', '--out', str(tmp_path / 'nothing')]) == 2
    assert 'learning_curve.json' in capsys.readouterr().err
    # The node's loaders: weights file, then its BN file.
    loaded = load_model(str(trained), 'resnet18')
    assert load_bn_states(loaded.model, summary['bn_file']) == 1
    assert torch.load(trained, weights_only=True)['conv1.weight'].dtype == torch.float16
    # pls-eval takes the file unchanged (test split of the tiny tarball).
    assert eval_main(['--weights', str(trained), '--arch', 'resnet18', '--data', str(tiny_tar),
                      '--ratios', '0.5', '--latency-runs', '0', '--threads', '1',
                      '--no-progress', '--out', str(tmp_path / 'eval')]) == 0
    assert json.loads((tmp_path / 'eval' / 'table1.json').read_text())['weights_sha256'] == \
        summary['weights_sha256']

    # A finished run's directory is not silently overwritten; --resume re-exports the same file.
    assert main(args) == 2
    assert '--resume' in capsys.readouterr().err
    assert main([*args, '--resume']) == 0
    assert sha256_of(trained) == summary['weights_sha256']
    assert main([*_args(tiny_tar, weights, out, '--per-ratio-bn'), '--resume', '--seed', '3']) == 2
    assert 'seed: checkpoint 0, now 3' in capsys.readouterr().err


def test_test_split_is_refused(tiny_tar: Path, weights: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(tiny_tar, weights, tmp_path / 'out', '--split', 'test')) == 2
    err = capsys.readouterr().err
    assert err.startswith('pls-train: error:') and 'train split only' in err
    assert "'test'" in err and not (tmp_path / 'out').exists()


def test_nan_loss_stops_with_the_step_and_writes_no_weights(
        tiny_tar: Path, weights: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / 'out'
    assert main(_args(tiny_tar, weights, out, '--lr', '1e30', '--checkpoint-every', '1')) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('pls-train: error: step ') and ('nan' in err or 'inf' in err
                                                          or 'not finite' in err)
    assert not (out / 'resnet18_pls.pt').exists()


@pytest.mark.parametrize('change, message', [
    (('--data', 'missing.tar.gz'), 'CIFAR-10 tarball not found'),
    (('--arch', 'resnet34'), 'does not match torchvision resnet34'),
    (('--arch', 'resnet999'), 'unknown torchvision architecture'),
    (('--weights', 'garbage.pt'), 'cannot be read as a torch.save file'),
    (('--weights', 'absent.pt'), 'does not exist'),
    (('--batch-size', '64'), 'batch_size 64 exceeds the 30 training images'),
])
def test_bad_input_is_one_clear_line(tiny_tar: Path, weights: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], change: tuple[str, str],
                                     message: str) -> None:
    (tmp_path / 'garbage.pt').write_bytes(b'not a torch file')
    args = _args(tiny_tar, weights, tmp_path / 'out')
    flag, value = change
    value = str(tmp_path / value) if value.endswith(('.gz', '.pt')) else value
    args[args.index(flag) + 1] = value
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / 'pls-train'
    command = [str(script)] if script.is_file() else [
        sys.executable, '-m', 'pls_perception.tools.train_cli']
    proc = subprocess.run([*command, '--help'], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and '--per-ratio-bn' in proc.stdout and '--resume' in proc.stdout
