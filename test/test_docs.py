"""README and docs agree with the committed result files and the code.

The README's result tables are rendered here from the files the tools wrote (pls-eval's
table1.csv, pls-demo's summary.json); a figure typed in by hand, or left stale after a re-run,
fails this test. The perception node's parameter reference must list every declared parameter,
and every relative link must point at a file that exists.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from pls_perception import paths
from pls_perception.pipeline.parameters import PARAMETERS

ROOT = paths.REPO_ROOT
README = ROOT / 'README.md'
TABLE1 = ROOT / 'docs' / 'results' / 'table1_combined' / 'table1.csv'
DEMO = ROOT / 'docs' / 'results' / 'demo' / 'summary.json'
FINE_TUNE = ROOT / 'docs' / 'results' / 'pls_train' / 'compare' / 'compare.csv'
INT8 = ROOT / 'docs' / 'results' / 'int8' / 'compare' / 'compare.csv'
ENGINES = ROOT / 'bench' / 'results' / 'bench_engines.json'
STARTUP = ROOT / 'bench' / 'results' / 'bench_startup.json'


def _runs(path: Path) -> dict[str, dict[str, dict]]:
    """compare.csv of pls-eval --compare: run label -> ratio -> row."""
    with path.open() as f:
        runs: dict[str, dict[str, dict]] = {}
        for row in csv.DictReader(f):
            runs.setdefault(row['run'], {})[row['ratio']] = row
    return runs


def _pct(row: dict, key: str) -> str:
    return f'{float(row[key]) * 100:.2f} %'


def table1_rows() -> list[str]:
    """README rows: r | top-1 | with BN recalibration | params (M) | MMACs."""
    with TABLE1.open() as f:
        return [f'| {float(r["ratio"]):g} | {float(r["accuracy"]) * 100:.2f} % | '
                f'{float(r["accuracy_bn"]) * 100:.2f} % | {float(r["params_m"]):.2f} M | '
                f'{int(r["macs"]) / 1e6:.1f} |' for r in csv.DictReader(f)]


def demo_rows() -> list[str]:
    """README rows: budget | frames | keep ratio | clock | latency p50/p95 | misses | energy."""
    steps = json.loads(DEMO.read_text())['steps']
    return [f'| {s["budget_ms"]:g} | {s["frames"]} | {s["keep_ratio_mean"]:.2f} | '
            f'{s["freq_mhz_median"]:g} | {s["latency_ms_p50"]:.1f} / {s["latency_ms_p95"]:.1f} | '
            f'{s["deadline_misses"]} | {s["energy_mj_per_frame"]:.1f} |'
            for s in steps if s['frames'] >= 10]


def fine_tune_rows() -> list[str]:
    """README rows: r | reference top-1 | fine-tuned top-1 | fine-tuned + BN recalibration."""
    runs = _runs(FINE_TUNE)
    reference, tuned = runs['reference'], runs['pls-train']
    return [f'| {ratio} | {_pct(reference[ratio], "accuracy")} | {_pct(row, "accuracy")} | '
            f'{_pct(row, "accuracy_bn")} |' for ratio, row in tuned.items()]


def int8_rows() -> list[str]:
    """README rows: r | fp32 top-1 | int8 top-1 | int8 - fp32 | int8 speed-up over fp32, one
    gated graph | the same, a session per ratio."""
    runs = _runs(INT8)
    details = json.loads(ENGINES.read_text())['details']
    gated, own = details['int8_speedup_vs_fp32'], details['int8_per_ratio_speedup_vs_fp32']
    return [f'| {ratio} | {_pct(runs["fp32"][ratio], "accuracy")} | {_pct(row, "accuracy")} | '
            f'{(float(row["accuracy"]) - float(runs["fp32"][ratio]["accuracy"])) * 100:+.2f} | '
            f'{gated[str(float(ratio))]:.2f}x | {own[str(float(ratio))]:.2f}x |'
            for ratio, row in runs['int8'].items()]


def startup_rows() -> list[str]:
    """README rows: precision | cold start | warm start | warm starts importing torch | RSS at
    rest after a warm start | after a cold start."""
    doc = json.loads(STARTUP.read_text())
    value = {m['name']: m['value'] for m in doc['metrics']}
    rows = []
    for p in ('fp32', 'int8'):
        warm = doc['details'][p]['warm']
        rows.append(
            f'| {p} | {value[f"{p} cold start to first classification"]:.1f} s | '
            f'{value[f"{p} warm start to first classification (median)"]:.2f} s | '
            f'{value[f"{p} warm starts that imported torch"]} of {len(warm)} | '
            f'{value[f"{p} node RSS at rest, all prebuilt ratios, warm start (median)"]:.0f} MB | '
            f'{value[f"{p} node RSS at rest after a cold start (torch loaded)"]:.0f} MB |')
    return rows


def prose_figures() -> list[str]:
    """Figures the README's prose quotes: what fine-tuning gains, the int8 engine memory."""
    runs = _runs(FINE_TUNE)
    reference, tuned = runs['reference'], runs['pls-train']

    def pct(row: dict) -> str:
        return f'{float(row["accuracy"]) * 100:.0f} %'
    cost = (float(reference['1']['accuracy']) - float(tuned['1']['accuracy'])) * 100
    rss = json.loads(ENGINES.read_text())['details']['rss_mb']
    gated, own = (f"{rss[k]['rss_mb']:.0f}" for k in ('all_sessions_int8',
                                                       'all_sessions_int8_per_ratio'))
    return [f'r = 0.5 from {pct(reference["0.5"])} to {pct(tuned["0.5"])}',
            f'r = 0.1 from {pct(reference["0.1"])} to {pct(tuned["0.1"])}',
            f'a cost of {cost:.2f} points at r = 1',
            f'all ten ratios in {gated} MB of engine memory', f'ten packed copies, {own} MB',
            f'the engine alone: {own} instead of {gated} MB']


def test_readme_prose_figures_are_the_committed_results() -> None:
    text = ' '.join(README.read_text().split())         # a figure may wrap across lines
    missing = [figure for figure in prose_figures() if figure not in text]
    assert not missing, f'README prose differs from {FINE_TUNE} and {ENGINES}: {missing}'


def test_readme_table1_is_the_committed_evaluation() -> None:
    text = README.read_text()
    missing = [row for row in table1_rows() if row not in text]
    assert not missing, f'README Table 1 differs from {TABLE1}: {missing}'


def test_readme_demo_table_is_the_committed_demo_run() -> None:
    text = README.read_text()
    missing = [row for row in demo_rows() if row not in text]
    assert not missing, f'README demo table differs from {DEMO}: {missing}'


def test_readme_fine_tune_table_is_the_committed_evaluation() -> None:
    text = README.read_text()
    missing = [row for row in fine_tune_rows() if row not in text]
    assert not missing, f'README fine-tuning table differs from {FINE_TUNE}: {missing}'


def test_readme_int8_table_is_the_committed_evaluation_and_benchmark() -> None:
    text = README.read_text()
    missing = [row for row in int8_rows() if row not in text]
    assert not missing, f'README int8 table differs from {INT8} and {ENGINES}: {missing}'
    if 'none falls back to fp32' in text:      # the README's claim under the table
        assert min(float(row.split('|')[4]) for row in int8_rows()) >= -0.5


def test_readme_startup_table_is_the_committed_benchmark() -> None:
    text = README.read_text()
    missing = [row for row in startup_rows() if row not in text]
    assert not missing, f'README start-up table differs from {STARTUP}: {missing}'


def test_parameter_reference_lists_every_parameter() -> None:
    text = (ROOT / 'docs' / 'perception_node.md').read_text()
    missing = [spec.name for spec in PARAMETERS if f'| `{spec.name}` |' not in text]
    assert not missing, f'docs/perception_node.md lacks {missing}'


def test_relative_links_resolve() -> None:
    broken = []
    for page in [README, *sorted((ROOT / 'docs').glob('*.md'))]:
        for target in re.findall(r'\]\(([^)#\s]+)[^)]*\)', page.read_text()):
            if '://' in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f'{page.relative_to(ROOT)}: {target}')
    assert not broken, broken


def test_readme_stays_short() -> None:
    assert len(README.read_text().splitlines()) <= 250
