"""pls-solve prints both strategies for a shipped profile; bad input exits with code 2."""
from __future__ import annotations

import json

import pytest

from pls_perception.tools import solve_cli


def test_table_shows_both_strategies(capsys: pytest.CaptureFixture[str]) -> None:
    assert solve_cli.main(['orin_nano_gpu', '--budget-ms', '15', '--accuracy-loss-max',
                           '0.02']) == 0
    out = capsys.readouterr().out
    assert 'joint' in out and 'alg2' in out and 'keep_ratio' in out and 'freq_mhz' in out


def test_json_output_matches_solver(capsys: pytest.CaptureFixture[str]) -> None:
    assert solve_cli.main(['orin_nano_cpu', '--budget-ms', '1000', '--accuracy-loss-max', '0',
                           '--strategy', 'joint', '--json']) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data) == ['joint'] and data['joint']['feasible'] is True
    assert data['joint']['freq_mhz'] == 499.2


@pytest.mark.parametrize('argv, match', [
    (['orin_nano_gpu', '--budget-ms', 'nan'], 'budget_ms'),
    (['orin_nano_gpu', '--budget-ms', '0'], 'budget_ms'),
    (['no_such_profile', '--budget-ms', '10'], 'no profile'),
])
def test_errors_exit_2(argv: list[str], match: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert solve_cli.main(argv) == 2
    assert match in capsys.readouterr().err
