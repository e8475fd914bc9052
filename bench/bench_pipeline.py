"""The running system as its users judge it: pipeline overhead, reaction time, latency vs ratio,
budget tracking. Every figure comes from the real node executables in separate processes over
loopback DDS, measured side by side in one run (the only way to compare on a shared machine).

1. Overhead and latency vs ratio: frames go one at a time through the perception node (publish to
   classification received) and, interleaved frame by frame, through the same model in this
   process (bare preprocessing + forward at the same ratio). Ratios are visited round-robin so
   every ratio sees the same machine load. Overhead target: < 10 % at r = 1 and r = 0.5.
2. Reaction time: /latency_budget published -> the manager's (keep_ratio, frequency_mhz) set in
   the perception node (seen on its /parameter_events; the node applies it before its next
   frame), over alternating budgets, frames flowing at 10 Hz. Target: p95 < 50 ms.
3. Budget tracking: a stepped budget schedule (scaled to the full network's latency measured in
   step 1) while frames arrive at 30 Hz, for PLS+DVFS (the manager as shipped: joint strategy,
   closed loop) against r = 1 at f_max (no manager) and r = 1 at the frequency that meets the
   budget (the manager on the profile restricted to r = 1, least energy): fraction of processed
   frames within budget, modelled energy per frame (profile power x measured latency).

The node runs with the simulated DVFS backend (no cpufreq on the CI machine) and, like the bare
model, with ``--threads`` torch threads.

Writes bench/results/bench_pipeline.json and bench_pipeline.png.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from _results import RESULTS_DIR, machine_info, metric, write_result
from pls_perception import paths
from pls_perception.budget_schedule import BudgetSchedule
from pls_perception.complexity import count_macs
from pls_perception.datasets import load_cifar10
from pls_perception.nodes.graph_probe import (MANAGER_MODULE, PERCEPTION_MODULE, PipelineProbe,
                                              probe_session, running_node,
                                              stamp_ns_of)
from pls_perception.optimizer import solve
from pls_perception.profiles import (OperatingPointProfile, load_profile, profile_from_dict,
                                     save_profile)
from pls_perception.weights import LoadedModel, load_model

NAME = 'bench_pipeline'
CURVE_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
OVERHEAD_TARGET_PCT = 10.0
REACTION_TARGET_MS = 50.0


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


def bare_inference_s(loaded: LoadedModel, frame: np.ndarray) -> float:
    """Preprocessing + forward of one frame in this process, as a script would do it."""
    start = time.perf_counter()
    with torch.inference_mode():
        loaded.model(loaded.preprocessing.to_tensor(frame))
    return time.perf_counter() - start


# ------------------------------------------------------------------ 1. overhead and ratio curve
def measure_ratio_sweep(probe: PipelineProbe, loaded: LoadedModel, frames: np.ndarray,
                        ratios: Sequence[float], rounds: int, warmup: int) -> dict[str, Any]:
    """Round-robin over ratios; per frame: node end-to-end, node-reported inference, bare."""
    samples: dict[float, dict[str, list[float]]] = {
        r: {'e2e_ms': [], 'node_ms': [], 'bare_ms': []} for r in ratios}
    for i in tqdm(range(warmup + rounds), desc='ratio sweep', unit='round'):
        for r in ratios:
            frame = frames[(i * len(ratios) + ratios.index(r)) % len(frames)]
            set_ratio(probe, r)
            e2e_s, classification = probe.round_trip(frame)
            if abs(float(classification['keep_ratio']) - r) > 1e-9:
                raise RuntimeError(f'classification ran at keep_ratio '
                                   f'{classification["keep_ratio"]}, expected {r}')
            loaded.model.set_keep_ratio(r)
            bare_s = bare_inference_s(loaded, frame)
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


# ------------------------------------------------------------------ 2. reaction time
Setpoint = tuple[float, float]  # (keep_ratio, frequency_mhz)


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
    parameters (its /parameter_events), ``changes`` times, with frames flowing at 10 Hz so the
    node is busy as in real use."""
    profile = load_profile(profile_path)
    (loose_ms, loose_point), (tight_ms, tight_point) = two_budgets(profile, accuracy_loss_max)
    delays_ms: list[float] = []
    timeouts = 0
    rng = random.Random(0)
    manager = {'profile': profile_path, 'accuracy_loss_max': accuracy_loss_max,
               'hysteresis': 0.0, 'closed_loop': False}
    with running_node(MANAGER_MODULE, manager, log_dir), probe.feeding(frames, 10.0):
        # Until the manager is up and has discovered both ends, budgets may go unheard.
        deadline = time.monotonic() + 60.0
        while _wait_setpoint(probe, loose_ms, loose_point, timeout_s=0.5) is None:
            if time.monotonic() > deadline:
                raise TimeoutError('the manager never applied the first budget')
        budgets = [(tight_ms, tight_point), (loose_ms, loose_point)]
        for i in tqdm(range(changes), desc='reaction', unit='change'):
            budget_ms, point = budgets[i % 2]
            delay_s = _wait_setpoint(probe, budget_ms, point, timeout_s=2.0)
            if delay_s is None:
                timeouts += 1
                _wait_setpoint(probe, budget_ms, point, timeout_s=30.0)
            else:
                delays_ms.append(delay_s * 1e3)
            time.sleep(0.15 + rng.random() * 0.1)  # random phase against periodic timers
    return {'loose_budget_ms': loose_ms, 'loose_point': loose_point,
            'tight_budget_ms': tight_ms, 'tight_point': tight_point,
            'changes': changes, 'timeouts_2s': timeouts, 'delays_ms': delays_ms,
            'p50_ms': percentile(delays_ms, 50), 'p95_ms': percentile(delays_ms, 95),
            'max_ms': max(delays_ms) if delays_ms else None}


def _wait_setpoint(probe: PipelineProbe, budget_ms: float, point: Setpoint,
                   timeout_s: float) -> float | None:
    """Publish ``budget_ms``; seconds until the node's parameters show ``point``."""
    start = len(probe.parameter_events)
    t0 = probe.publish_budget(budget_ms)
    event = probe.parameter_events.wait_for(
        lambda e: (e.data.get('keep_ratio'), e.data.get('frequency_mhz')) == point,
        timeout_s, start)
    return None if event is None else event.t_s - t0


# ------------------------------------------------------------------ 3. budget tracking
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
    """Latency and MACs vs ratio; and, when measured, the tracking runs over time."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tracking = details.get('tracking')
    fig, axes = plt.subplots(1, 2 if tracking else 1, figsize=(12 if tracking else 6, 4),
                             squeeze=False)
    ax = axes[0][0]
    curve = details['sweep']['curve']
    r = [c['keep_ratio'] for c in curve]
    ax.plot(r, [c['latency_ratio'] for c in curve], 'o-', label='node latency / full')
    ax.plot(r, [c['macs_ratio'] for c in curve], 's--', label='MACs / full')
    ax.set_xlabel('keep ratio r')
    ax.set_ylabel('fraction of the full network')
    ax.set_title('PLS on ResNet-152, 32x32, running node')
    ax.grid(alpha=0.3)
    ax.legend()
    if tracking:
        ax = axes[0][1]
        for label, run in tracking['runs'].items():
            rows = run['frames']
            ax.plot([f['t_s'] for f in rows], [f['node_ms'] for f in rows], '.-', ms=3,
                    lw=0.6, label=f'{label} latency')
        rows = next(iter(tracking['runs'].values()))['frames']
        ax.step([f['t_s'] for f in rows], [f['budget_ms'] for f in rows], 'k', where='post',
                lw=1.5, label='budget')
        ax.set_xlabel('time (s)')
        ax.set_ylabel('latency (ms)')
        ax.set_title(f'budget tracking, frames at {tracking["rate_hz"]:g} Hz')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--weights', default=default_weights(),
                        help='weights for node and bare model (default: shared reference, '
                             'else random)')
    parser.add_argument('--ratios', type=float, nargs='+', default=list(CURVE_RATIOS),
                        help='keep ratios of the sweep; must include 1, 0.5 and 0.1 '
                             '(default: %(default)s)')
    parser.add_argument('--rounds', type=int, default=40,
                        help='measured frames per ratio in the sweep (default: %(default)s)')
    parser.add_argument('--warmup', type=int, default=3, help='warm-up rounds (not measured)')
    parser.add_argument('--changes', type=int, default=100,
                        help='budget changes for the reaction time (default: %(default)s)')
    parser.add_argument('--step-s', type=float, default=8.0,
                        help='length of each budget step in the tracking run')
    parser.add_argument('--rate-hz', type=float, default=30.0, help='tracking frame rate')
    parser.add_argument('--profile', default=str(paths.config_dir() / 'profiles'
                                                 / 'orin_nano_cpu.yaml'))
    parser.add_argument('--accuracy-loss-max', type=float, default=0.05)
    parser.add_argument('--threads', type=int, default=1,
                        help='torch threads of the node and of the bare model; 1 keeps the '
                             'comparison clean on a shared machine (default: %(default)s)')
    parser.add_argument('--skip', nargs='*', default=[], choices=['reaction', 'tracking'])
    parser.add_argument('--results-dir', type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if not {1.0, 0.5, 0.1} <= set(args.ratios):
        parser.error(f'--ratios must include 1, 0.5 and 0.1, got {args.ratios!r}')

    torch.set_num_threads(args.threads)
    machine = machine_info()
    frames, frames_source = load_frames(64)
    loaded = load_model(args.weights, allow_random=args.weights == 'random')
    log_dir = Path(tempfile.mkdtemp(prefix='bench_pipeline_'))  # node logs, derived profile
    print(f'node logs in {log_dir}')
    node_params = {'weights': args.weights, 'dvfs_backend': 'simulated', 'frequency_mhz': 0.0,
                   'keep_ratio': 1.0, 'num_threads': args.threads}
    details: dict[str, Any] = {'frames': frames_source, 'weights': loaded.source}
    with probe_session() as probe:
        def start_node(**params: Any) -> Any:
            return running_node(PERCEPTION_MODULE, params, log_dir, activate_with=probe)

        with start_node(**node_params):
            details['sweep'] = measure_ratio_sweep(probe, loaded, frames, args.ratios,
                                                   args.rounds, args.warmup)
            if 'reaction' not in args.skip:
                details['reaction'] = measure_reaction(probe, frames, args.profile,
                                                       args.accuracy_loss_max, args.changes,
                                                       log_dir)
        if 'tracking' not in args.skip:
            full_ms = details['sweep']['curve'][0]['node_p50_ms']
            details['tracking'] = measure_tracking(
                probe, frames, args.profile, args.accuracy_loss_max, full_ms, args.step_s,
                args.rate_hz, log_dir, node_params, start_node)

    metrics = collect_metrics(details)
    notes = [f'frames: {frames_source}; weights: {loaded.source}',
             'measured on a shared 2-core machine (other engineers running jobs): absolute '
             'latencies are noisy, ratios measured side by side are the meaningful figures',
             'node uses the simulated DVFS backend (no cpufreq here): frequency effects are '
             'emulated by stretching compute time by f_max/f, energy is modelled as profile '
             'power(f) x power_scale(r) x measured latency',
             f'torch threads: {args.threads} in the node and for the bare model']
    plot(details, args.results_dir / f'{NAME}.png')
    path = write_result(NAME, metrics, notes=notes, details=details, machine=machine,
                        results_dir=args.results_dir)
    print(f'wrote {path}')
    return 0


def collect_metrics(details: dict[str, Any]) -> list[dict[str, Any]]:
    curve = {c['keep_ratio']: c for c in details['sweep']['curve']}
    rows = []
    for r in (1.0, 0.5):
        c = curve[r]
        rows += [metric(f'bare inference p50, r={r:g}', c['bare_p50_ms'], 'ms'),
                 metric(f'end-to-end via node p50, r={r:g}', c['e2e_p50_ms'], 'ms'),
                 metric(f'pipeline overhead, r={r:g}', c['overhead_pct'], '%',
                        target_max=OVERHEAD_TARGET_PCT)]
    rows += [metric('speed-up PLS-50 over full (node)', curve[0.5]['speedup'], 'x'),
             metric('MACs ratio PLS-50', curve[0.5]['macs_ratio'], ''),
             metric('speed-up PLS-10 over full (node)', curve[0.1]['speedup'], 'x'),
             metric('MACs ratio PLS-10', curve[0.1]['macs_ratio'], '')]
    if 'reaction' in details:
        reaction = details['reaction']
        rows += [metric('reaction budget->operating point p50', reaction['p50_ms'], 'ms'),
                 metric('reaction budget->operating point p95', reaction['p95_ms'], 'ms',
                        target_max=REACTION_TARGET_MS)]
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


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


if __name__ == '__main__':
    sys.exit(main())
