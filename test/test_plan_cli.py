"""pls-plan end to end on a random ResNet-18 and a tiny generated CIFAR-10-layout tarball."""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pls_perception.errors import ProfileError
from pls_perception.io.datasets import CIFAR10_CLASSES
from pls_perception.io.file_inputs import sha256_of
from pls_perception.skipping.plans import load_plan, removable_blocks
from pls_perception.tools import plan_cli


@pytest.fixture(scope='module')
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp('plan_cli')
    rng = np.random.default_rng(0)
    tar_path = root / 'tiny-cifar.tar.gz'
    with tarfile.open(tar_path, 'w:gz') as tar:
        for split in ('train', 'test'):
            for name in CIFAR10_CLASSES:
                for i in range(2):
                    buffer = io.BytesIO()
                    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(buffer, format='JPEG')
                    info = tarfile.TarInfo(f'cifar10/{split}/{name}/{i:04d}.jpg')
                    info.size = buffer.tell()
                    buffer.seek(0)
                    tar.addfile(info, buffer)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
    weights = root / 'resnet18.pt'
    torch.save(net.state_dict(), weights)
    return tar_path, weights


def _common(assets: tuple[Path, Path]) -> list[str]:
    tar_path, weights = assets
    return ['--weights', str(weights), '--arch', 'resnet18', '--dataset', str(tar_path)]


def test_learn_show_compare(assets: tuple[Path, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = tmp_path / 'plan.yaml'
    assert plan_cli.main(['learn', *_common(assets), '--method', 'greedy', '--cost', 'accuracy',
                          '--calibration-per-class', '1', '-o', str(plan_path)]) == 0
    plan = load_plan(plan_path, weights_sha256=sha256_of(assets[1]))
    assert sorted(plan.order) == sorted(removable_blocks((2, 2, 2, 2)))
    assert (plan.method, plan.cost, plan.calibration_size, plan.arch) == (
        'greedy', 'accuracy', 10, 'resnet18')

    assert plan_cli.main(['show', str(plan_path), '--ratios', '1', '0.5']) == 0
    assert 'removal order' in capsys.readouterr().out

    out = tmp_path / 'compare'
    assert plan_cli.main(['compare', *_common(assets), '--plan', str(plan_path),
                          '--ratios', '1', '0.5', '--per-class', '1',
                          '--bn-recalibration-images', '10', '--batch-size', '4',
                          '--output-dir', str(out)]) == 0
    rows = json.loads((out / 'plan_comparison.json').read_text())['rows']
    # 2 policies x 2 ratios x (with, without BN recalibration)
    assert len(rows) == 8
    assert {(r['policy'], r['bn_recalibration']) for r in rows} == {
        ('proportional', False), ('proportional', True), ('plan', False), ('plan', True)}
    for ratio in (1.0, 0.5):
        pair = [r for r in rows if r['pls_ratio'] == ratio and not r['bn_recalibration']]
        # The plan is evaluated at exactly PLS's MACs.
        assert pair[0]['macs'] == pair[1]['macs']
        assert all(0.0 <= r['accuracy'] <= 1.0 for r in pair)
    with (out / 'plan_comparison.csv').open() as f:
        assert len(list(csv.DictReader(f))) == 8
    assert (out / 'plan_comparison.png').stat().st_size > 0
    assert (out / 'plan_comparison.md').read_text().count('\n') == 2 + 2   # header + 2 ratios


def test_compare_rejects_plan_of_other_weights(assets: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = tmp_path / 'plan.yaml'
    assert plan_cli.main(['learn', *_common(assets), '--method', 'oneshot',
                          '--calibration-per-class', '1', '-o', str(plan_path)]) == 0
    text = plan_path.read_text()
    sha = sha256_of(assets[1])
    plan_path.write_text(text.replace(sha, 'f' * 64))
    assert plan_cli.main(['compare', *_common(assets), '--plan', str(plan_path),
                          '--per-class', '1', '--output-dir', str(tmp_path / 'c')]) == 1
    assert 'sha256' in capsys.readouterr().err
    with pytest.raises(ProfileError):
        load_plan(plan_path, weights_sha256=sha)


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        plan_cli.main(['--help'])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert all(cmd in help_text for cmd in ('learn', 'show', 'compare'))
