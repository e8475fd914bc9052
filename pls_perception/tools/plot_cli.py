"""pls-plot: paper-style (Fig. 4-6) PNG figures from any operating-point profile.

Writes five figures into ``--out-dir`` (prefix = profile file stem):
``*_energy_vs_freq.png`` energy/frame vs frequency per keep ratio, ``*_latency_vs_freq.png``,
``*_energy_vs_latency.png``, ``*_edp_vs_freq.png`` with each ratio's EDP optimum and the
accuracy-feasible optimum marked, and ``*_iso_accuracy.png``: the optimizer's least energy per
frame vs latency budget, one curve per accuracy level (each admits one more ratio). Filled
markers are values measured on the device or read off the paper; hollow ones are scaled or
modelled.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pls_perception.errors import ProfileError  # noqa: E402
from pls_perception.operating_points.optimizer import solve  # noqa: E402
from pls_perception.operating_points.profiles import OperatingPointProfile  # noqa: E402
from pls_perception.operating_points.profiles import load_profile, resolve_profile_path

MEASURED = ('measured', 'paper')


def _per_ratio(ax: plt.Axes, prof: OperatingPointProfile, x: np.ndarray, y: np.ndarray,
               measured: np.ndarray) -> None:
    cmap = plt.get_cmap('viridis')
    for i, r in enumerate(prof.ratios):
        color = cmap(i / max(1, prof.ratios.size - 1))
        ax.plot(x[i], y[i], '-', color=color, lw=1.2, label=f'r={r:g}')
        ax.plot(x[i][measured[i]], y[i][measured[i]], 'o', color=color, ms=5)
        ax.plot(x[i][~measured[i]], y[i][~measured[i]], 'o', mfc='none', color=color, ms=4)


def _finish(fig: plt.Figure, ax: plt.Axes, prof: OperatingPointProfile, title: str,
            path: Path) -> Path:
    ax.set_title(f'{prof.device_name}\n{title}', fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def iso_accuracy_levels(prof: OperatingPointProfile, count: int = 5) -> list[float]:
    """Up to ``count`` distinct accuracy-loss bounds, each admitting one more ratio."""
    losses = np.unique(np.maximum(prof.accuracy_loss, 0.0))
    picks = np.unique(np.linspace(0, losses.size - 1, min(count, losses.size)).round())
    return [float(losses[int(i)]) for i in picks]


def plot_profile(prof: OperatingPointProfile, out_dir: Path, prefix: str,
                 accuracy_loss_max: float = 0.02) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    f = np.broadcast_to(prof.frequencies_mhz, prof.latency_ms.shape)
    lat_measured = np.isin(prof.sources['latency_ms'], MEASURED)
    energy_measured = np.array([[prof.energy_source(i, j) == 'measured'
                                 for j in range(f.shape[1])] for i in range(f.shape[0])])
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    _per_ratio(ax, prof, f, prof.energy_mj, energy_measured)
    ax.set(xlabel='frequency (MHz)', ylabel='energy per frame (mJ)')
    paths.append(_finish(fig, ax, prof, 'Energy per frame vs frequency',
                         out_dir / f'{prefix}_energy_vs_freq.png'))

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    _per_ratio(ax, prof, f, prof.latency_ms, lat_measured)
    ax.set(xlabel='frequency (MHz)', ylabel='latency per frame, bs=1 (ms)')
    paths.append(_finish(fig, ax, prof, 'Latency vs frequency',
                         out_dir / f'{prefix}_latency_vs_freq.png'))

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    _per_ratio(ax, prof, prof.latency_ms, prof.energy_mj, energy_measured & lat_measured)
    ax.set(xlabel='latency (ms)', ylabel='energy per frame (mJ)')
    paths.append(_finish(fig, ax, prof, 'Energy vs latency (each curve: one ratio, all f)',
                         out_dir / f'{prefix}_energy_vs_latency.png'))

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    _per_ratio(ax, prof, f, prof.edp, energy_measured & lat_measured)
    best_f = prof.frequencies_mhz[np.argmin(prof.edp, axis=1)]
    ax.plot(best_f, prof.edp.min(axis=1), 'kv', ms=6, label='per-ratio optimum')
    opt = solve(prof, float('inf'), accuracy_loss_max, objective='edp')
    ax.plot([opt.freq_mhz], [opt.edp], 'r*', ms=14,
            label=f'optimum, loss<={accuracy_loss_max:g}: r={opt.keep_ratio:g}, '
                  f'{opt.freq_mhz:g} MHz')
    ax.set(xlabel='frequency (MHz)', ylabel='EDP (mJ x ms)', yscale='log')
    paths.append(_finish(fig, ax, prof, 'Energy-delay product vs frequency',
                         out_dir / f'{prefix}_edp_vs_freq.png'))

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    budgets = np.geomspace(prof.latency_ms.min() * 0.9, prof.latency_ms.max() * 1.1, 120)
    full_accuracy = prof.accuracy[-1]
    for loss in iso_accuracy_levels(prof):
        pts = [solve(prof, float(b), loss, objective='energy') for b in budgets]
        energy = np.array([p.energy_mj if p.feasible else np.nan for p in pts])
        ax.step(budgets, energy, where='post',
                label=f'top-1 >= {100 * (full_accuracy - loss):.1f} % (loss <= {loss:.3f})')
    ax.set(xlabel='latency budget (ms)', ylabel='least energy per frame (mJ)', xscale='log')
    paths.append(_finish(fig, ax, prof, 'Iso-accuracy: optimal energy vs budget',
                         out_dir / f'{prefix}_iso_accuracy.png'))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='pls-plot', description=__doc__.split('\n')[0])
    parser.add_argument('profiles', nargs='+', help='profile YAML paths or shipped names')
    parser.add_argument('--out-dir', default='plots', help='output directory (default plots/)')
    parser.add_argument('--accuracy-loss-max', type=float, default=0.02,
                        help='bound used to mark the EDP optimum (fraction, default 0.02)')
    args = parser.parse_args(argv)
    try:
        for name in args.profiles:
            path = resolve_profile_path(name)
            for png in plot_profile(load_profile(path), Path(args.out_dir), path.stem,
                                    args.accuracy_loss_max):
                print(png)
    except (ProfileError, ValueError) as e:
        print(f'pls-plot: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
