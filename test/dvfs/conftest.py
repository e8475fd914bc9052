"""Fixtures for the DVFS backend tests (the real machine has no cpufreq or devfreq)."""
from __future__ import annotations

from pathlib import Path

import pytest
from fake_sysfs import make_policy


@pytest.fixture
def cpufreq_root(tmp_path: Path) -> Path:
    make_policy(tmp_path, 0)
    make_policy(tmp_path, 4)
    return tmp_path
