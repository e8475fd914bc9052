"""pls-plot writes the five paper-style PNGs for a profile."""
from __future__ import annotations

from pathlib import Path

import pytest

from pls_perception.operating_points.profiles import load_profile
from pls_perception.paths import config_dir
from pls_perception.tools import plot_cli

KINDS = ('energy_vs_freq', 'latency_vs_freq', 'energy_vs_latency', 'edp_vs_freq',
         'iso_accuracy')


def test_writes_all_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_cli.main(['orin_nano_gpu', '--out-dir', str(tmp_path)]) == 0
    for kind in KINDS:
        png = tmp_path / f'orin_nano_gpu_{kind}.png'
        assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000
    assert capsys.readouterr().out.count('.png') == len(KINDS)


def test_iso_accuracy_levels_are_distinct_and_start_at_zero() -> None:
    prof = load_profile(config_dir() / 'profiles' / 'orin_nano_cpu.yaml')
    levels = plot_cli.iso_accuracy_levels(prof)
    assert levels[0] == 0.0 and len(set(levels)) == len(levels) <= 5


def test_missing_profile_exit_2(tmp_path: Path) -> None:
    assert plot_cli.main([str(tmp_path / 'nope.yaml'), '--out-dir', str(tmp_path)]) == 2
