"""The running system as its users judge it, per engine: overhead, frame rate, reaction, tracking.

Pipeline overhead and sustainable frame rate per inference engine, reaction time, latency vs
ratio, budget tracking. Every figure comes from the real node executables in separate processes
over loopback DDS, measured side by side in one run (the only way to compare on a shared
machine).

1. Overhead and latency vs ratio, per engine (``--engines``, default torch and onnxruntime): the
   perception node runs with that engine, and frames go one at a time through it (publish to
   its ``~/frame_info`` received) and, interleaved frame by frame, through the same engine in this
   process (bare preprocessing + ``engine.infer`` at the same ratio, same threads). Ratios are
   visited round-robin so every ratio sees the same machine load. Overhead is reported relative
   (target < 10 % at r = 1 and r = 0.5) and absolute: a faster engine makes the same DDS cost a
   bigger fraction.
2. Sustainable frame rate, per engine: frames published at ``--flood-factor`` times the
   sequential rate (capped at ``--flood-max-hz``) for ``--flood-s``; processed frames per second,
   end-to-end latency of the processed frames, and how fast the node answers a parameter
   request meanwhile.
3. Reaction time (node default engine): /latency_budget published -> the manager's
   (keep_ratio, frequency_mhz) set in the perception node (seen on its /parameter_events; the
   node applies it before its next frame), and -> the first classification the node produces
   at that point (its ``~/frame_info`` names the pair its frame ran at), over alternating
   budgets, frames flowing at 10 Hz. Targets: p95 < 50 ms, and p95 < one frame period + 50 ms
   (a frame in flight is cut short, so the next frame runs at the new point).
4. Budget tracking (node default engine): a stepped budget schedule (scaled to the full
   network's latency measured in step 1) while frames arrive at 30 Hz, for PLS+DVFS (the
   manager as shipped: joint strategy, closed loop) against r = 1 at f_max (no manager) and
   r = 1 at the frequency that meets the budget (the manager on the profile restricted to r = 1,
   least energy): fraction of processed frames within budget, modelled energy per frame
   (profile power x measured latency).

The node runs with the simulated DVFS backend (no cpufreq on the CI machine) and, like the bare
engine, with ``--threads`` intra-op threads. ONNX graphs for the measured and profile ratios are
prebuilt (node parameter ``prebuild_ratios``) from the graph cache, which this process fills
first (keyed by the weights' hash: a second run loads them in well under a second each).

Writes bench/results/bench_pipeline.json and bench_pipeline.png. ``--quick`` is a smoke run
(three ratios, a few rounds, short phases) whose figures are not meant for the README: it writes
to a temporary folder unless ``--results-dir`` is given.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS_DIR, machine_info, metric, print_metrics, write_result  # noqa: E402

from pls_perception import paths  # noqa: E402
from pls_perception.engines import (ENGINE_NAMES, InferenceEngine, make_engine,  # noqa: E402
                                    resolve_engine_name)
from pls_perception.io.datasets import load_cifar10  # noqa: E402
from pls_perception.operating_points.budget_schedule import BudgetSchedule  # noqa: E402
from pls_perception.operating_points.optimizer import solve  # noqa: E402
from pls_perception.operating_points.profiles import OperatingPointProfile  # noqa: E402
from pls_perception.operating_points.profiles import load_profile, profile_from_dict, save_profile
from pls_perception.skipping.complexity import count_macs  # noqa: E402
from pls_perception.skipping.weights import LoadedModel, load_model  # noqa: E402
from pls_perception.testing.graph_probe import (MANAGER_MODULE, PERCEPTION_MODULE,  # noqa: E402
                                                PipelineProbe, probe_session, running_node,
                                                stamp_ns_of)

NAME = 'bench_pipeline'
CURVE_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
DEFAULT_ENGINES = ('torch', 'onnxruntime')
OVERHEAD_TARGET_PCT = 10.0
REACTION_TARGET_MS = 50.0
# Run lengths: the full benchmark, and --quick (a smoke run). An option given explicitly wins.
FULL = {'ratios': list(CURVE_RATIOS), 'rounds': 40, 'warmup': 3, 'changes': 100, 'step_s': 8.0,
        'flood_s': 10.0}
QUICK = {'ratios': [1.0, 0.5, 0.1], 'rounds': 3, 'warmup': 1, 'changes': 6, 'step_s': 1.5,
         'flood_s': 3.0}


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def default_weights() -> str:
    ref = paths.reference_weights()
    return str(ref) if ref.is_file() else 'random'


def load_frames(n: int) -> tuple[np.ndarray, str]:
    """``n`` 32x32 RGB frames: the shared CIFAR-10 test split, else seeded noise."""
    if paths.cifar10_tar().is_file():
        images, _, _ = load_cifar10(split='test', per_class=max(1, math.ceil(n / 10)))
        return images[:n], 'CIFAR-10 test split (shared)'
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), 'random noise (no ../shared)'


def set_ratio(probe: PipelineProbe, keep_ratio: float) -> None:
    results = probe.set_parameters({'keep_ratio': float(keep_ratio)})
    if not all(ok for ok, _ in results):
        raise RuntimeError(f'perception node rejected keep_ratio {keep_ratio}: {results!r}')


def bare_inference_s(engine: InferenceEngine, loaded: LoadedModel, frame: np.ndarray) -> float:
    """Preprocessing + inference of one frame in this process, as a script would do it (and as
    the node does it: ``to_array`` then ``engine.infer``)."""
    start = time.perf_counter()
    engine.infer(loaded.preprocessing.to_array(frame))
    return time.perf_counter() - start


# ------------------------------------------------------------------ 1. overhead and ratio curve
def measure_ratio_sweep(probe: PipelineProbe, engine: InferenceEngine, loaded: LoadedModel,
                        frames: np.ndarray, ratios: Sequence[float], rounds: int,
                        warmup: int) -> dict[str, Any]:
    """Round-robin over ratios; per frame: node end-to-end, node-reported inference, bare
    (``engine`` in this process, the same kind the node runs)."""
    samples: dict[float, dict[str, list[float]]] = {
        r: {'e2e_ms': [], 'node_ms': [], 'bare_ms': []} for r in ratios}
    for i in tqdm(range(warmup + rounds), desc=f'ratio sweep ({engine.name})', unit='round'):
        for j, r in enumerate(ratios):
            frame = frames[(i * len(ratios) + j) % len(frames)]
            set_ratio(probe, r)
            e2e_s, classification = probe.round_trip(frame)
            if abs(float(classification['keep_ratio']) - r) > 1e-9:
                raise RuntimeError(f'classification ran at keep_ratio '
                                   f'{classification["keep_ratio"]}, expected {r}')
            if classification.get('engine') != engine.name:
                raise RuntimeError(f'the node runs engine {classification.get("engine")!r}, '
                                   f'expected {engine.name!r}')
            engine.set_keep_ratio(r)
            bare_s = bare_inference_s(engine, loaded, frame)
            if i >= warmup:
                samples[r]['e2e_ms'].append(e2e_s * 1e3)
                samples[r]['node_ms'].append(float(classification['latency_ms']))
                samples[r]['bare_ms'].append(bare_s * 1e3)
    full_macs = count_macs(loaded.model, (32, 32), 1.0)
    curve = []
    for r in ratios:
        s = samples[r]
        e2e, bare = statistics.median(s['e2e_ms']), statistics.median(s['bare_ms'])
        curve.append({
            'keep_ratio': r,
            'macs_ratio': count_macs(loaded.model, (32, 32), r) / full_macs,
            'e2e_p50_ms': e2e, 'e2e_p95_ms': percentile(s['e2e_ms'], 95),
            'node_p50_ms': statistics.median(s['node_ms']),
            'bare_p50_ms': bare, 'bare_p95_ms': percentile(s['bare_ms'], 95),
            'overhead_pct': 100.0 * (e2e / bare - 1.0),
            'overhead_ms': e2e - bare,
            'samples': s,
        })
    full = next(c for c in curve if c['keep_ratio'] == 1.0)
    for c in curve:
        c['latency_ratio'] = c['node_p50_ms'] / full['node_p50_ms']
        c['speedup'] = full['node_p50_ms'] / c['node_p50_ms']
    return {'rounds': rounds, 'warmup_rounds': warmup, 'curve': curve}


# ------------------------------------------------------------------ 2. sustainable frame rate
def measure_flood(probe: PipelineProbe, frames: np.ndarray, keep_ratio: float,
                  sequential_ms: float, factor: float, max_hz: float, duration_s: float,
                  label: str, answer_period_s: float = 0.5) -> dict[str, Any]:
    """Frames at ``factor`` x the sequential rate (1 / ``sequential_ms``, capped at ``max_hz``)
    for ``duration_s``: frames processed per second, their end-to-end latency, and the time
    the node takes to answer a parameter request (keep_ratio set to its value) meanwhile."""
    set_ratio(probe, keep_ratio)
    rate_hz = min(factor * 1e3 / sequential_ms, max_hz)
    first = len(probe.classifications)
    answers_ms: list[float] = []
    with probe.feeding(frames, rate_hz) as stamps, \
            tqdm(total=round(duration_s), desc=label, unit='s') as bar:
        t0 = time.perf_counter()
        while (elapsed_s := time.perf_counter() - t0) < duration_s:
            t_call = time.perf_counter()
            set_ratio(probe, keep_ratio)
            answers_ms.append((time.perf_counter() - t_call) * 1e3)
            bar.update(min(round(elapsed_s), bar.total) - bar.n)
            time.sleep(answer_period_s)
        t_end = time.perf_counter()
        bar.update(bar.total - bar.n)
        published = list(stamps)
    time.sleep(1.0)  # the frame in flight
    window_s = t_end - t0
    published_set = set(published)
    processed = [r for r in probe.classifications.items[first:]
                 if stamp_ns_of(r.data) in published_set]
    wrong = {float(r.data['keep_ratio']) for r in processed} - {keep_ratio}
    if wrong:
        raise RuntimeError(f'flood frames ran at keep_ratio {sorted(wrong)}, expected '
                           f'{keep_ratio}')
    in_window = [r for r in processed if r.t_s <= t_end]
    e2e_ms = [probe.latency_s(r) * 1e3 for r in processed]
    return {'keep_ratio': keep_ratio, 'sequential_e2e_p50_ms': sequential_ms,
            'target_rate_hz': rate_hz, 'duration_s': window_s,
            'published': len(published), 'published_hz': len(published) / window_s,
            'processed': len(processed), 'processed_hz': len(in_window) / window_s,
            'e2e_p50_ms': percentile(e2e_ms, 50), 'e2e_p95_ms': percentile(e2e_ms, 95),
            'node_p50_ms': percentile([float(r.data['latency_ms']) for r in processed], 50),
            'answer_p50_ms': percentile(answers_ms, 50),
            'answer_max_ms': max(answers_ms) if answers_ms else None,
            'answers_ms': answers_ms, 'e2e_ms': e2e_ms}


# ------------------------------------------------------------------ 3. reaction time
Setpoint = tuple[float, float]  # (keep_ratio, frequency_mhz)
REACTION_RATE_HZ = 10.0


def two_budgets(profile: OperatingPointProfile, accuracy_loss_max: float) -> tuple[
        tuple[float, Setpoint], tuple[float, Setpoint]]:
    """A loose and a tight budget for which the optimizer picks different operating points,
    with those points: ((loose_ms, point), (tight_ms, point))."""
    lat = np.asarray(profile.latency_ms, dtype=float)
    chosen = []
    for budget_ms in np.geomspace(lat.min() * 1.05, lat.max() * 1.5, 60):
        point = solve(profile, float(budget_ms), accuracy_loss_max)
        if point.feasible:
            chosen.append((float(budget_ms), (point.keep_ratio, point.freq_mhz)))
    loose, tight = chosen[-1], chosen[0]
    if loose[1] == tight[1]:
        raise RuntimeError(f'profile gives one operating point for every budget: {chosen!r}')
    return loose, tight


def measure_reaction(probe: PipelineProbe, frames: np.ndarray, profile_path: str,
                     accuracy_loss_max: float, changes: int, log_dir: Path) -> dict[str, Any]:
    """Budget published -> the manager's (keep_ratio, frequency_mhz) in the perception node's
    parameters (its /parameter_events), and -> the first classification produced at that point,
    ``changes`` times, with frames flowing at REACTION_RATE_HZ so the node is busy as in real
    use."""
    profile = load_profile(profile_path)
    (loose_ms, loose_point), (tight_ms, tight_point) = two_budgets(profile, accuracy_loss_max)
    delays_ms: list[float] = []
    effect_ms: list[float] = []
    timeouts = unseen = 0
    rng = random.Random(0)
    manager = {'profile': profile_path, 'accuracy_loss_max': accuracy_loss_max,
               'hysteresis': 0.0, 'closed_loop': False}
    with running_node(MANAGER_MODULE, manager, log_dir), \
            probe.feeding(frames, REACTION_RATE_HZ):
        # Until the manager is up and has discovered both ends, budgets may go unheard.
        deadline = time.monotonic() + 60.0
        while _wait_setpoint(probe, loose_ms, loose_point, timeout_s=0.5) is None:
            if time.monotonic() > deadline:
                raise TimeoutError('the manager never applied the first budget')
        budgets = [(tight_ms, tight_point), (loose_ms, loose_point)]
        for i in tqdm(range(changes), desc='reaction', unit='change'):
            budget_ms, point = budgets[i % 2]
            waited = _wait_setpoint(probe, budget_ms, point, timeout_s=2.0)
            if waited is None:
                timeouts += 1
                _wait_setpoint(probe, budget_ms, point, timeout_s=30.0)
            else:
                t0, delay_s, classified_from = waited
                delays_ms.append(delay_s * 1e3)
                first = probe.classifications.wait_for(
                    lambda r: _ran_at(r.data, point), 2.0, classified_from)
                if first is None:
                    unseen += 1
                else:
                    effect_ms.append((first.t_s - t0) * 1e3)
            time.sleep(0.15 + rng.random() * 0.1)  # random phase against periodic timers
    return {'loose_budget_ms': loose_ms, 'loose_point': loose_point,
            'tight_budget_ms': tight_ms, 'tight_point': tight_point,
            'changes': changes, 'timeouts_2s': timeouts, 'delays_ms': delays_ms,
            'p50_ms': percentile(delays_ms, 50), 'p95_ms': percentile(delays_ms, 95),
            'max_ms': max(delays_ms) if delays_ms else None,
            'frame_period_ms': 1e3 / REACTION_RATE_HZ, 'effect_delays_ms': effect_ms,
            'effect_unseen_2s': unseen,
            'effect_p50_ms': percentile(effect_ms, 50),
            'effect_p95_ms': percentile(effect_ms, 95),
            'effect_max_ms': max(effect_ms) if effect_ms else None}


def _wait_setpoint(probe: PipelineProbe, budget_ms: float, point: Setpoint,
                   timeout_s: float) -> tuple[float, float, int] | None:
    """Publish ``budget_ms``; (publish time, seconds until the node's parameters show ``point``,
    index of the first classification received after the publication)."""
    start = len(probe.parameter_events)
    classified_from = len(probe.classifications)
    t0 = probe.publish_budget(budget_ms)
    event = probe.parameter_events.wait_for(
        lambda e: (e.data.get('keep_ratio'), e.data.get('frequency_mhz')) == point,
        timeout_s, start)
    return None if event is None else (t0, event.t_s - t0, classified_from)


def _ran_at(frame_info: dict[str, Any], point: Setpoint) -> bool:
    """Whether a classification's frame ran at ``point`` (keep_ratio, frequency_mhz)."""
    return (math.isclose(float(frame_info['keep_ratio']), point[0])
            and math.isclose(float(frame_info['frequency_mhz']), point[1]))


# ------------------------------------------------------------------ 4. budget tracking
def run_schedule(probe: PipelineProbe, frames: np.ndarray, schedule: BudgetSchedule,
                 rate_hz: float, label: str) -> dict[str, Any]:
    """Publish frames at ``rate_hz`` and budgets per ``schedule``; per classified frame: budget
    in force when it was published, node latency, end-to-end latency, ratio, frequency."""
    start_index = len(probe.classifications)
    published: dict[int, tuple[float, float]] = {}  # stamp -> (publish time s, budget ms)
    period_s = 1.0 / rate_hz
    t_start = time.perf_counter()
    last_budget = None
    n = 0
    with tqdm(total=round(schedule.duration_s * rate_hz), desc=label, unit='frame') as bar:
        while True:
            elapsed_s = time.perf_counter() - t_start
            if elapsed_s >= schedule.duration_s:
                break
            budget_ms = schedule.budget_at(elapsed_s)
            if budget_ms != last_budget:
                probe.publish_budget(budget_ms)
                last_budget = budget_ms
            published[probe.publish_frame(frames[n % len(frames)])] = (elapsed_s, budget_ms)
            n += 1
            bar.update(1)
            time.sleep(max(0.0, t_start + n * period_s - time.perf_counter()))
    time.sleep(2.0)  # let the last frame drain
    rows = []
    for received in probe.classifications.items[start_index:]:
        stamp = stamp_ns_of(received.data)
        if stamp not in published:
            continue
        data = received.data
        t_s, budget_ms = published[stamp]
        rows.append({'t_s': t_s, 'budget_ms': budget_ms, 'node_ms': float(data['latency_ms']),
                     'e2e_ms': probe.latency_s(received) * 1e3,
                     'keep_ratio': float(data['keep_ratio']),
                     'freq_mhz': float(data['frequency_mhz'])})
    return {'published': n, 'classified': len(rows), 'frames': rows}


def summarize_tracking(run: dict[str, Any], profile: OperatingPointProfile) -> dict[str, Any]:
    rows = run['frames']
    energies = [_energy_mj(r, profile) for r in rows]
    return {
        'published': run['published'], 'classified': run['classified'],
        'met_fraction_node': _fraction([r['node_ms'] <= r['budget_ms'] for r in rows]),
        'met_fraction_e2e': _fraction([r['e2e_ms'] <= r['budget_ms'] for r in rows]),
        'energy_per_frame_mj': statistics.fmean(energies) if energies else None,
        'mean_keep_ratio': statistics.fmean(r['keep_ratio'] for r in rows) if rows else None,
        'mean_freq_mhz': statistics.fmean(r['freq_mhz'] for r in rows) if rows else None,
    }


def _fraction(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _energy_mj(row: dict[str, Any], profile: OperatingPointProfile) -> float:
    """Modelled energy of one frame, the profile's rule applied to the measured latency:
    power_w(f) * power_scale(r) * latency_ms (W * ms = mJ)."""
    power_w = float(np.interp(row['freq_mhz'], profile.frequencies_mhz, profile.power_w))
    scale = float(np.interp(row['keep_ratio'], profile.ratios, profile.power_scale))
    return power_w * scale * row['node_ms']


def full_network_profile(profile_path: str, out_dir: Path) -> str:
    """The profile restricted to r = 1, so the manager can only pick a frequency (the DVFS-only
    baseline); written to ``out_dir`` and its path returned."""
    profile = load_profile(profile_path)
    doc = profile.to_dict()
    doc['ratios'] = doc['ratios'][-1:]
    for key in ('accuracy', 'latency_ms', 'power_scale'):
        if key in doc:
            doc[key]['values'] = doc[key]['values'][-1:]
            if isinstance(doc[key]['source'], list):
                doc[key]['source'] = doc[key]['source'][-1:]
    out_dir.mkdir(parents=True, exist_ok=True)
    return str(save_profile(profile_from_dict(doc, 'r=1 baseline'), out_dir / 'r1_only.yaml'))


def measure_tracking(probe: PipelineProbe, frames: np.ndarray, profile_path: str,
                     accuracy_loss_max: float, full_latency_ms: float, step_s: float,
                     rate_hz: float, log_dir: Path, node_params: dict[str, Any],
                     start_node: Callable[..., Any]) -> dict[str, Any]:
    """PLS+DVFS vs the two r = 1 baselines on one stepped schedule scaled to this machine."""
    # Loose (everyone meets it; DVFS can slow down), just above the full network, below it
    # (only a skipped network can meet it), then loose-ish again.
    factors = (2.0, 1.2, 0.85, 1.5)
    schedule = BudgetSchedule(','.join(f'{i * step_s:g}:{f * full_latency_ms:.1f}'
                                       for i, f in enumerate(factors)),
                              period_s=len(factors) * step_s)
    profile = load_profile(profile_path)
    f_max = float(max(profile.frequencies_mhz))
    runs = {}
    manager = {'profile': profile_path, 'accuracy_loss_max': accuracy_loss_max}
    configs = [
        ('pls_dvfs', manager),
        ('r1_fmax', None),
        # only r = 1 in the profile; least energy = the slowest frequency within the budget
        ('r1_dvfs', dict(manager, profile=full_network_profile(profile_path, log_dir),
                         objective='energy')),
    ]
    for label, manager_params in configs:
        params = dict(node_params, keep_ratio=1.0, frequency_mhz=f_max)
        with start_node(**params):
            if manager_params is None:
                runs[label] = run_schedule(probe, frames, schedule, rate_hz, label)
            else:
                with running_node(MANAGER_MODULE, manager_params, log_dir):
                    time.sleep(3.0)  # manager up and discovered before the schedule starts
                    runs[label] = run_schedule(probe, frames, schedule, rate_hz, label)
    return {'schedule': repr(schedule), 'rate_hz': rate_hz,
            'summary': {k: summarize_tracking(v, profile) for k, v in runs.items()},
            'runs': runs}


# ------------------------------------------------------------------ plot and main
def plot(details: dict[str, Any], path: Path) -> None:
    """Latency and MACs vs ratio and absolute end-to-end vs bare latency, per engine; and, when
    measured, the tracking runs over time."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tracking = details.get('tracking')
    panels = 3 if tracking else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax, ax_abs = axes[0][0], axes[0][1]
    curve = []
    for i, (name, measured) in enumerate(details['engines'].items()):
        curve = measured['sweep']['curve']
        r = [c['keep_ratio'] for c in curve]
        color = f'C{i}'
        ax.plot(r, [c['latency_ratio'] for c in curve], 'o-', color=color,
                label=f'{name}: node latency / full')
        ax_abs.plot(r, [c['e2e_p50_ms'] for c in curve], 'o-', color=color,
                    label=f'{name}: end-to-end via node')
        ax_abs.plot(r, [c['bare_p50_ms'] for c in curve], 's--', color=color,
                    label=f'{name}: bare inference')
    ax.plot([c['keep_ratio'] for c in curve], [c['macs_ratio'] for c in curve], 'k^:',
            label='MACs / full')
    ax.set_ylabel('fraction of the full network')
    ax.set_title('PLS on ResNet-152, 32x32, running node')
    ax_abs.set_yscale('log')
    ax_abs.set_ylabel('latency p50 (ms)')
    ax_abs.set_title('end-to-end over DDS vs bare inference, same engine')
    for a in (ax, ax_abs):
        a.set_xlabel('keep ratio r')
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    if tracking:
        ax = axes[0][2]
        for label, run in tracking['runs'].items():
            rows = run['frames']
            ax.plot([f['t_s'] for f in rows], [f['node_ms'] for f in rows], '.-', ms=3,
                    lw=0.6, label=f'{label} latency')
        rows = next(iter(tracking['runs'].values()))['frames']
        ax.step([f['t_s'] for f in rows], [f['budget_ms'] for f in rows], 'k', where='post',
                lw=1.5, label='budget')
        ax.set_xlabel('time (s)')
        ax.set_ylabel('latency (ms)')
        ax.set_title(f'budget tracking ({tracking["engine"]}), frames at '
                     f'{tracking["rate_hz"]:g} Hz')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog='full run: .venv/bin/python bench/bench_pipeline.py; '
               'smoke run: .venv/bin/python bench/bench_pipeline.py --quick')
    parser.add_argument('--quick', action='store_true',
                        help=f'smoke run: {", ".join(f"{k}={v}" for k, v in QUICK.items())} '
                             'unless given')
    parser.add_argument('--weights', default=default_weights(),
                        help='weights for node and bare engine (default: shared reference, '
                             'else random)')
    parser.add_argument('--engines', nargs='+', default=list(DEFAULT_ENGINES),
                        choices=ENGINE_NAMES,
                        help='engines to measure overhead and frame rate with, each in the node '
                             'and bare (default: %(default)s)')
    parser.add_argument('--ratios', type=float, nargs='+',
                        help='keep ratios of the sweep; must include 1, 0.5 and 0.1 '
                             f'(default: {FULL["ratios"]})')
    parser.add_argument('--rounds', type=int,
                        help=f'measured frames per ratio in the sweep (default: {FULL["rounds"]})')
    parser.add_argument('--warmup', type=int,
                        help=f'warm-up rounds, not measured (default: {FULL["warmup"]})')
    parser.add_argument('--changes', type=int,
                        help=f'budget changes for the reaction time (default: {FULL["changes"]})')
    parser.add_argument('--step-s', type=float,
                        help=f'length of each budget step in the tracking run '
                             f'(default: {FULL["step_s"]:g})')
    parser.add_argument('--rate-hz', type=float, default=30.0, help='tracking frame rate')
    parser.add_argument('--flood-s', type=float,
                        help=f'length of each flood (default: {FULL["flood_s"]:g})')
    parser.add_argument('--flood-factor', type=float, default=10.0,
                        help='flood rate / sequential rate (default: %(default)s)')
    parser.add_argument('--flood-max-hz', type=float, default=1000.0,
                        help='cap on the flood publish rate (default: %(default)s)')
    parser.add_argument('--flood-ratios', type=float, nargs='+', default=[1.0],
                        help='keep ratios flooded, each one of --ratios (default: %(default)s)')
    parser.add_argument('--profile', default=str(paths.config_dir() / 'profiles'
                                                 / 'orin_nano_cpu.yaml'))
    parser.add_argument('--accuracy-loss-max', type=float, default=0.05)
    parser.add_argument('--threads', type=int, default=1,
                        help='intra-op threads (torch / onnxruntime) of the node and of the bare '
                             'engine; 1 keeps the comparison clean on a shared machine '
                             '(default: %(default)s)')
    parser.add_argument('--onnx-cache-dir', default='',
                        help="ONNX graph cache of node and bare engine ('' = $PLS_ONNX_CACHE, "
                             'else ~/.cache/pls_perception/onnx)')
    parser.add_argument('--skip', nargs='*', default=[],
                        choices=['flood', 'reaction', 'tracking'])
    parser.add_argument('--results-dir', type=Path,
                        help=f'where the JSON and PNG go (default: {RESULTS_DIR}; with --quick '
                             'a temporary folder)')
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not {1.0, 0.5, 0.1} <= set(args.ratios):
        parser.error(f'--ratios must include 1, 0.5 and 0.1, got {args.ratios!r}')
    if not set(args.flood_ratios) <= set(args.ratios):
        parser.error(f'--flood-ratios {args.flood_ratios!r} must be among --ratios')
    args.engines = list(dict.fromkeys(resolve_engine_name(e) for e in args.engines))
    args.default_engine = resolve_engine_name('auto')
    if ({'reaction', 'tracking'} - set(args.skip)
            and args.default_engine not in args.engines):
        parser.error(f'reaction and tracking run with the node default engine '
                     f'{args.default_engine!r}: add it to --engines, or --skip reaction '
                     'tracking')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    frames, frames_source = load_frames(64)
    loaded = load_model(args.weights, allow_random=args.weights == 'random')
    log_dir = Path(tempfile.mkdtemp(prefix='bench_pipeline_'))  # node logs, derived profile
    print(f'node logs in {log_dir}')
    results_dir = args.results_dir or (log_dir if args.quick else RESULTS_DIR)
    # The ONNX graphs the nodes load at configure: the measured ratios and, when the manager
    # runs, the profile's (its choices); built into the cache by this process first.
    prebuild = set(args.ratios)
    if {'reaction', 'tracking'} - set(args.skip):
        prebuild |= {float(r) for r in load_profile(args.profile).ratios}
    prebuild = sorted(prebuild)
    node_params = {'weights': args.weights, 'dvfs_backend': 'simulated', 'frequency_mhz': 0.0,
                   'keep_ratio': 1.0, 'num_threads': args.threads,
                   'prebuild_ratios': prebuild, 'onnx_cache_dir': args.onnx_cache_dir}
    details: dict[str, Any] = {'frames': frames_source, 'weights': loaded.source,
                               'default_engine': args.default_engine, 'engines': {}}
    with probe_session() as probe:
        @contextmanager
        def start_node(**params: Any) -> Iterator[Any]:
            """An active node with every prebuilt graph loaded: none builds while measured."""
            with running_node(PERCEPTION_MODULE, params, log_dir, activate_with=probe) as node:
                probe.wait_for_graphs()
                yield node

        for name in args.engines:
            print(f'engine {name}: preparing the bare engine (ONNX graphs from the cache)')
            with make_engine(name, loaded, keep_ratio=1.0, ratios=prebuild,
                             cache_dir=args.onnx_cache_dir or None,
                             intra_op_threads=args.threads) as bare, \
                    start_node(**node_params, engine=name):
                measured = details['engines'][name] = {'sweep': measure_ratio_sweep(
                    probe, bare, loaded, frames, args.ratios, args.rounds, args.warmup)}
                curve = {c['keep_ratio']: c for c in measured['sweep']['curve']}
                if 'flood' not in args.skip:
                    measured['flood'] = [measure_flood(
                        probe, frames, r, curve[r]['e2e_p50_ms'], args.flood_factor,
                        args.flood_max_hz, args.flood_s, f'flood ({name}, r={r:g})')
                        for r in args.flood_ratios]
                if name == args.default_engine and 'reaction' not in args.skip:
                    details['reaction'] = measure_reaction(
                        probe, frames, args.profile, args.accuracy_loss_max, args.changes,
                        log_dir)
        if 'tracking' not in args.skip:
            curve = details['engines'][args.default_engine]['sweep']['curve']
            full_ms = next(c for c in curve if c['keep_ratio'] == 1.0)['node_p50_ms']
            details['tracking'] = measure_tracking(  # engine not set: the node's default
                probe, frames, args.profile, args.accuracy_loss_max, full_ms, args.step_s,
                args.rate_hz, log_dir, node_params, start_node)
            details['tracking']['engine'] = args.default_engine

    metrics = collect_metrics(details)
    notes = [f'frames: {frames_source}; weights: {loaded.source}',
             'measured on a shared 2-core machine (other engineers running jobs): absolute '
             'latencies are noisy, ratios measured side by side are the meaningful figures',
             f'engines: {", ".join(args.engines)}; for each, the node runs that engine and the '
             f'bare figure is the same engine in the benchmark process (preprocessing + infer), '
             f'{args.threads} intra-op thread(s) in both; reaction and tracking use the node '
             f'default engine ({args.default_engine})',
             f'flood: frames at {args.flood_factor:g}x the sequential rate (at most '
             f'{args.flood_max_hz:g} Hz) for {args.flood_s:g} s; a parameter request every '
             '0.5 s meanwhile',
             'node uses the simulated DVFS backend (no cpufreq here): frequency effects are '
             'emulated by stretching compute time by f_max/f, energy is modelled as profile '
             'power(f) x power_scale(r) x measured latency']
    if args.quick:
        notes.insert(0, 'QUICK smoke run (--quick): too few samples for the README')
    results_dir.mkdir(parents=True, exist_ok=True)
    plot(details, results_dir / f'{NAME}.png')
    path = write_result(NAME, metrics, notes=notes, details=details, machine=machine,
                        results_dir=results_dir)
    print_metrics(metrics, path)
    return 0


def collect_metrics(details: dict[str, Any]) -> list[dict[str, Any]]:
    engines = details['engines']
    rows = []
    for name, measured in engines.items():
        curve = {c['keep_ratio']: c for c in measured['sweep']['curve']}
        for r in (1.0, 0.5):
            c = curve[r]
            rows += [metric(f'{name}: bare inference p50, r={r:g}', c['bare_p50_ms'], 'ms'),
                     metric(f'{name}: end-to-end via node p50, r={r:g}', c['e2e_p50_ms'], 'ms'),
                     metric(f'{name}: pipeline overhead, r={r:g}', c['overhead_pct'], '%',
                            target_max=OVERHEAD_TARGET_PCT),
                     metric(f'{name}: pipeline overhead (absolute), r={r:g}', c['overhead_ms'],
                            'ms')]
        rows += [metric(f'{name}: speed-up PLS-50 over full (node)', curve[0.5]['speedup'], 'x'),
                 metric(f'{name}: speed-up PLS-10 over full (node)', curve[0.1]['speedup'], 'x')]
        for flood in measured.get('flood', []):
            r = f'r={flood["keep_ratio"]:g}'
            rows += [
                metric(f'{name}: sustainable rate under flood, {r}', flood['processed_hz'],
                       'frames/s'),
                metric(f'{name}: flood publish rate, {r}', flood['published_hz'], 'frames/s'),
                metric(f'{name}: end-to-end under flood p50, {r}', flood['e2e_p50_ms'], 'ms'),
                metric(f'{name}: end-to-end under flood p95, {r}', flood['e2e_p95_ms'], 'ms'),
                metric(f'{name}: parameter answer under flood p50', flood['answer_p50_ms'], 'ms'),
                metric(f'{name}: parameter answer under flood max', flood['answer_max_ms'], 'ms')]
    if 'torch' in engines:
        torch_full = _full(engines['torch'])['e2e_p50_ms']
        for name, measured in engines.items():
            if name != 'torch':
                rows.append(metric(f'end-to-end speed-up {name} over torch, r=1',
                                   torch_full / _full(measured)['e2e_p50_ms'], 'x'))
    curve = {c['keep_ratio']: c for c in next(iter(engines.values()))['sweep']['curve']}
    rows += [metric('MACs ratio PLS-50', curve[0.5]['macs_ratio'], ''),
             metric('MACs ratio PLS-10', curve[0.1]['macs_ratio'], '')]
    if 'reaction' in details:
        reaction = details['reaction']
        rows += [metric('reaction budget->operating point p50', reaction['p50_ms'], 'ms'),
                 metric('reaction budget->operating point p95', reaction['p95_ms'], 'ms',
                        target_max=REACTION_TARGET_MS),
                 metric('budget->first classification at the new point p50',
                        reaction['effect_p50_ms'], 'ms'),
                 metric('budget->first classification at the new point p95',
                        reaction['effect_p95_ms'], 'ms',
                        target_max=reaction['frame_period_ms'] + REACTION_TARGET_MS),
                 metric('budget changes with no classification at the new point within 2 s',
                        reaction['effect_unseen_2s'], 'changes', target_max=0.5)]
    if 'tracking' in details:
        for label, s in details['tracking']['summary'].items():
            rows += [
                metric(f'tracking {label}: processed frames within budget',
                       _pct(s['met_fraction_node']), '%'),
                metric(f'tracking {label}: frames processed of published',
                       _pct(s['classified'] / s['published']), '%'),
                metric(f'tracking {label}: modelled energy/frame', s['energy_per_frame_mj'],
                       'mJ')]
    return rows


def _full(measured: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in measured['sweep']['curve'] if c['keep_ratio'] == 1.0)


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


if __name__ == '__main__':
    sys.exit(main())
