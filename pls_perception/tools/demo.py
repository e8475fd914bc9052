"""pls-demo: the demo graph of launch/demo.launch.py, started with rclpy alone.

Many machines (pip-installed ROS 2, CI) have rclpy but not ``ros2 launch``. This tool starts the
same executables as the launch file as separate processes (perception_node, dvfs_manager,
image_source, budget_schedule) with the same parameter files (config/perception.yaml,
config/dvfs_manager.yaml, config/demo.yaml) and overrides, drives the perception lifecycle node to
active over its ChangeState service, shows a live view of the closed loop, and finally writes a
timeline (CSV + PNG) and a summary per budget step (CSV + JSON) to ``--out``.

Over 500 lines: one command's graph start-up, live view and summary, which share their state.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from pls_perception import paths
from pls_perception.operating_points.budget_schedule import BudgetSchedule
from pls_perception.operating_points.profiles import OperatingPointProfile, load_profile

PERCEPTION = 'pls_perception_node'
MANAGER = 'dvfs_manager'
GENERATED_FRAMES = 40
RANDOM_BANNER = (
    'NO SHARED DATA: running RANDOM weights on GENERATED frames, so the labels are meaningless '
    '(latency, ratio, frequency and energy behave as usual). For real labels pass '
    '--weights <resnet152 state_dict.pt> --images <image folder | tar | rosbag2>, or put the '
    'project\'s shared/ folder next to the repo (or set PLS_SHARED_DIR).')


@dataclass
class Frame:
    """One classification as seen by the demo (t_s from the first budget)."""

    t_s: float
    budget_ms: float
    keep_ratio: float
    freq_mhz: float
    latency_ms: float
    deadline_miss: bool
    energy_mj: float
    label: str
    score: float


def demo_settings() -> dict[str, Any]:
    """config/demo.yaml as a dict (node name -> parameters)."""
    data = yaml.safe_load((paths.config_dir() / 'demo.yaml').read_text())
    return {name: section['ros__parameters'] for name, section in data.items()}


def generate_frames(folder: Path, count: int = GENERATED_FRAMES, seed: int = 0) -> Path:
    """Write ``count`` 32x32 synthetic PNG frames (smooth colour blobs) into ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    for i in range(count):
        base = rng.uniform(0, 255, size=(3,))
        slope = rng.uniform(-120, 120, size=(2, 3))
        rgb = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
        rgb += rng.normal(0, 12, size=rgb.shape)
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(folder / f'{i:04d}.png')
    return folder


def executable(name: str, module: str) -> list[str]:
    """The console script ``name`` next to this Python, else ``python -m module``."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, '-m', module]


class Monitor:
    """An rclpy node that drives the lifecycle and records what the graph does."""

    def __init__(self, profile: OperatingPointProfile) -> None:
        import rclpy
        from lifecycle_msgs.srv import ChangeState, GetState
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Float64, String

        self._ChangeState = ChangeState
        self._GetState = GetState
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('pls_demo_monitor', context=self.context)
        self.profile = profile
        self.lock = threading.Lock()
        self.frames: list[Frame] = []
        self.labels: deque[str] = deque(maxlen=6)
        self.point: dict[str, Any] = {}
        self.budget_ms = math.nan
        self.t0: float | None = None
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, f'/{PERCEPTION}/frame_info',
                                      self._on_classification, reliable)
        self.node.create_subscription(String, f'/{MANAGER}/operating_point',
                                      self._on_point, latched)
        self.node.create_subscription(Float64, '/latency_budget', self._on_budget, 10)
        self._change_state = self.node.create_client(ChangeState, f'/{PERCEPTION}/change_state')
        self._get_state = self.node.create_client(GetState, f'/{PERCEPTION}/get_state')
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _call(self, client: Any, request: Any, timeout_s: float) -> Any:
        if not client.wait_for_service(timeout_sec=timeout_s):
            raise TimeoutError(f'{client.srv_name} not available after {timeout_s:g} s')
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout_s):
            raise TimeoutError(f'{client.srv_name} did not answer within {timeout_s:g} s')
        return future.result()

    def activate(self, unanswered_s: float,
                 progress: Callable[[str, str, float], None] = lambda *_: None) -> None:
        """configure, then activate the perception node (as demo.launch.py's events do).

        A cold configure (graph export on a slow machine) may take long: this waits as long as
        the node keeps answering ``get_state``, reporting ``progress(transition, state, s)``
        every second, and gives up only after ``unanswered_s`` without an answer.
        """
        from lifecycle_msgs.msg import Transition

        for transition_id, label in ((Transition.TRANSITION_CONFIGURE, 'configure'),
                                     (Transition.TRANSITION_ACTIVATE, 'activate')):
            request = self._ChangeState.Request()
            request.transition.id = transition_id
            if not self._change_state.wait_for_service(timeout_sec=unanswered_s):
                raise TimeoutError(f'{self._change_state.srv_name} not available after '
                                   f'{unanswered_s:g} s')
            done = threading.Event()
            future = self._change_state.call_async(request)
            future.add_done_callback(lambda _: done.set())
            t0 = last_answer = time.monotonic()
            while not done.wait(1.0):
                try:
                    state = self._call(self._get_state, self._GetState.Request(),
                                       2.0).current_state.label
                    last_answer = time.monotonic()
                except TimeoutError:
                    state = 'not answering'
                progress(label, state, time.monotonic() - t0)
                if time.monotonic() - last_answer > unanswered_s:
                    raise TimeoutError(f'{PERCEPTION} has not answered for {unanswered_s:g} s '
                                       f'during {label}')
            if not future.result().success:
                raise RuntimeError(f'{PERCEPTION}: the {label} transition failed (see its log)')

    def _on_budget(self, msg: Any) -> None:
        with self.lock:
            if self.t0 is None:
                self.t0 = time.monotonic()
            self.budget_ms = float(msg.data)

    def _on_point(self, msg: Any) -> None:
        with self.lock:
            self.point = json.loads(msg.data)

    def _on_classification(self, msg: Any) -> None:
        data = json.loads(msg.data)
        with self.lock:
            if self.t0 is None:
                return
            latency_ms = float(data['latency_ms'])
            r, f = float(data['keep_ratio']), float(data['frequency_mhz'])
            # the node sends energy_mj = null when it has no energy profile
            reported = data.get('energy_mj')
            energy_mj = float(reported) if reported is not None else \
                modelled_energy_mj(self.profile, r, f, latency_ms)
            self.frames.append(Frame(
                t_s=time.monotonic() - self.t0, budget_ms=self.budget_ms, keep_ratio=r,
                freq_mhz=f, latency_ms=latency_ms, deadline_miss=latency_ms > self.budget_ms,
                energy_mj=energy_mj, label=str(data.get('label', '')),
                score=float(data.get('score', math.nan))))
            self.labels.appendleft(f'{data.get("label", "?")} ({data.get("score", 0):.2f})')

    def snapshot(self) -> tuple[list[Frame], dict[str, Any], float, list[str]]:
        with self.lock:
            return list(self.frames), dict(self.point), self.budget_ms, list(self.labels)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(5.0)


def modelled_energy_mj(profile: OperatingPointProfile, keep_ratio: float, freq_mhz: float,
                       latency_ms: float) -> float:
    """Energy of one frame from the profile's power (nearest grid point) and its latency."""
    ri = int(np.argmin(np.abs(profile.ratios - keep_ratio)))
    fi = int(np.argmin(np.abs(profile.frequencies_mhz - freq_mhz)))
    return float(profile.power_w[fi] * profile.power_scale[ri] * latency_ms)


def summarize(frames: Sequence[Frame], schedule: BudgetSchedule,
              settle_frames: int) -> list[dict[str, Any]]:
    """One row per budget step in force: latency, misses (after ``settle_frames``), energy."""
    rows: list[dict[str, Any]] = []
    segment: list[Frame] = []
    for frame in [*frames, None]:
        if frame is not None and (not segment or frame.budget_ms == segment[0].budget_ms):
            segment.append(frame)
            continue
        if segment:
            lat = np.array([f.latency_ms for f in segment])
            settled = segment[settle_frames:]
            first_ok = next((i for i, f in enumerate(segment) if not f.deadline_miss), None)
            rows.append({
                'start_s': round(segment[0].t_s, 3), 'end_s': round(segment[-1].t_s, 3),
                'budget_ms': segment[0].budget_ms, 'frames': len(segment),
                'keep_ratio_mean': round(float(np.mean([f.keep_ratio for f in segment])), 4),
                'freq_mhz_median': float(np.median([f.freq_mhz for f in segment])),
                'latency_ms_p50': round(float(np.percentile(lat, 50)), 3),
                'latency_ms_p95': round(float(np.percentile(lat, 95)), 3),
                'latency_ms_max': round(float(lat.max()), 3),
                'deadline_misses': int(sum(f.deadline_miss for f in segment)),
                'misses_after_settling': int(sum(f.deadline_miss for f in settled)),
                'frames_to_meet_budget': -1 if first_ok is None else first_ok,
                'energy_mj_per_frame': round(float(np.mean([f.energy_mj for f in segment])), 3),
            })
        segment = [] if frame is None else [frame]
    return rows


def write_outputs(out: Path, frames: Sequence[Frame], rows: list[dict[str, Any]],
                  meta: dict[str, Any]) -> dict[str, Path]:
    """timeline.csv, summary.csv, summary.json and timeline.png in ``out``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = {'timeline_csv': out / 'timeline.csv', 'summary_csv': out / 'summary.csv',
               'summary_json': out / 'summary.json', 'timeline_png': out / 'timeline.png'}
    fields = list(Frame.__dataclass_fields__)
    with written['timeline_csv'].open('w', newline='') as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(asdict(f) for f in frames)
    with written['summary_csv'].open('w', newline='') as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ['budget_ms'])
        writer.writeheader()
        writer.writerows(rows)
    written['summary_json'].write_text(json.dumps({**meta, 'steps': rows}, indent=2))

    t = np.array([f.t_s for f in frames])
    fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    ax = axes[0]
    ax.step(t, [f.budget_ms for f in frames], where='post', color='k', label='budget')
    ax.plot(t, [f.latency_ms for f in frames], '.', ms=4, label='measured latency')
    miss = [f for f in frames if f.deadline_miss]
    ax.plot([f.t_s for f in miss], [f.latency_ms for f in miss], 'rx', ms=5,
            label='deadline miss')
    ax.set_ylabel('latency (ms)')
    ax.legend(loc='upper right', fontsize=8)
    axes[1].step(t, [f.keep_ratio for f in frames], where='post')
    axes[1].set_ylabel('keep ratio')
    axes[1].set_ylim(0, 1.05)
    axes[2].step(t, [f.freq_mhz for f in frames], where='post', color='tab:orange')
    axes[2].set_ylabel('frequency (MHz)')
    axes[3].plot(t, [f.energy_mj for f in frames], '.', ms=4, color='tab:green')
    axes[3].set_ylabel('energy / frame (mJ)')
    axes[3].set_xlabel('time since the first budget (s)')
    loop = 'closed loop' if meta.get('closed_loop', True) else 'OPEN loop'
    fig.suptitle(f'pls-demo: {meta["weights_label"]}, {meta["dvfs_backend"]} DVFS, '
                 f'profile {Path(meta["profile"]).name}, {loop}', fontsize=10)
    fig.tight_layout()
    fig.savefig(written['timeline_png'], dpi=110)
    plt.close(fig)
    return written


def _console() -> Any:
    """A rich console; off a terminal (CI logs) lines are not wrapped and tables get room."""
    from rich.console import Console

    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


class View:
    """Live view: rich on a terminal, a status line every few seconds otherwise (CI logs)."""

    def __init__(self, live: bool) -> None:
        self.console = _console()
        self.live = None
        self._last_line = 0.0
        if live and self.console.is_terminal:
            from rich.live import Live
            self.live = Live(console=self.console, refresh_per_second=4)
            self.live.start()

    def update(self, elapsed_s: float, duration_s: float, frames: list[Frame],
               point: dict[str, Any], budget_ms: float, labels: list[str]) -> None:
        recent = frames[-20:]
        latency = np.median([f.latency_ms for f in recent]) if recent else math.nan
        energy = np.mean([f.energy_mj for f in recent]) if recent else math.nan
        misses = sum(f.deadline_miss for f in frames)
        ratio = recent[-1].keep_ratio if recent else math.nan
        freq = recent[-1].freq_mhz if recent else math.nan
        if self.live is None:
            if time.monotonic() - self._last_line >= 5.0:
                self._last_line = time.monotonic()
                print(f'[{elapsed_s:5.1f}/{duration_s:g} s] budget {budget_ms:g} ms  '
                      f'ratio {ratio:g}  {freq:g} MHz  latency p50 {latency:.1f} ms  '
                      f'misses {misses}/{len(frames)}  energy {energy:.1f} mJ/frame  '
                      f'label {labels[0] if labels else "-"}', flush=True)
            return
        from rich.table import Table

        table = Table(title=f'pls-demo  {elapsed_s:5.1f} / {duration_s:g} s', min_width=60)
        table.add_column('')
        table.add_column('value', justify='right')
        feasible = point.get('feasible')
        table.add_row('latency budget', f'{budget_ms:g} ms')
        table.add_row('manager choice', f'ratio {point.get("keep_ratio", "-")} at '
                                        f'{point.get("freq_mhz", "-")} MHz'
                      + ('' if feasible in (None, True) else ' [red](infeasible)[/red]'))
        table.add_row('running', f'ratio {ratio:g} at {freq:g} MHz')
        colour = 'green' if latency <= budget_ms else 'red'
        table.add_row('measured latency (p50, last 20)', f'[{colour}]{latency:.1f} ms[/{colour}]')
        table.add_row('deadline misses', f'{misses} / {len(frames)} frames')
        table.add_row('energy per frame (last 20)', f'{energy:.1f} mJ')
        table.add_row('latest labels', '\n'.join(labels[:4]) or '-')
        self.live.update(table)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    settings = demo_settings()
    parser = argparse.ArgumentParser(
        prog='pls-demo', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--duration', type=float, default=60.0,
                        help='seconds to run after the first budget')
    parser.add_argument('--out', type=Path, default=Path('out/demo'), help='output folder')
    parser.add_argument('--weights', default='',
                        help="state_dict path | imagenet | random; default: the shared reference "
                             'weights, else random')
    parser.add_argument('--images', default='',
                        help='image folder | image tar | rosbag2; default: the shared CIFAR-10 '
                             'test split, else generated frames')
    parser.add_argument('--profile', default='',
                        help='operating-point profile YAML; default: shipped Orin Nano CPU')
    parser.add_argument('--backend', default='simulated',
                        help='DVFS backend: simulated | auto | cpufreq | nvidia | jetson')
    parser.add_argument('--device', default='cpu', help='torch device')
    parser.add_argument('--schedule', default=settings['budget_schedule']['schedule'],
                        help='latency budget steps "seconds:ms,..." (looped)')
    parser.add_argument('--rate-hz', type=float, default=settings['image_source']['rate_hz'],
                        help='image rate')
    parser.add_argument('--open-loop', action='store_true',
                        help='manager without the online latency correction (closed_loop:=false)'
                             ', to compare')
    parser.add_argument('--settle-frames', type=int, default=3,
                        help='frames after a budget change not counted in misses_after_settling')
    parser.add_argument('--startup-timeout', type=float, default=180.0,
                        help='give up when the perception node has not answered for this many '
                             'seconds while it configures (a slow configure that answers is '
                             'waited for)')
    parser.add_argument('--log-level', default='info', help='ROS log level of the nodes')
    parser.add_argument('--no-live', action='store_true',
                        help='no live table (automatic when stdout is not a terminal)')
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error(f'--duration must be > 0 s, got {args.duration!r}')
    try:
        BudgetSchedule(args.schedule, loop=True)
    except ValueError as e:
        parser.error(str(e))
    return args


def resolve_inputs(args: argparse.Namespace, work_dir: Path) -> tuple[str, str, bool]:
    """(weights, images, meaningful_labels): the shared data when present, else stand-ins."""
    weights, images = args.weights, args.images
    real = True
    if not weights:
        ref = paths.reference_weights()
        weights = str(ref) if ref.is_file() else 'random'
    if not images:
        tar = paths.cifar10_tar()
        images = str(tar) if tar.is_file() else str(generate_frames(work_dir / 'frames'))
        real = real and tar.is_file()
    return weights, images, real and weights != 'random'


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = _console()
    from pls_perception.operating_points.profiles import default_profile_path
    from pls_perception.testing.graph_probe import NodeProcess

    profile_path = args.profile or str(default_profile_path())
    profile = load_profile(profile_path)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_dir = out / 'logs'
    log_dir.mkdir(exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix='pls_demo_'))
    weights, images, meaningful = resolve_inputs(args, work_dir)
    if not meaningful:
        console.print(f'[bold yellow]{RANDOM_BANNER}[/bold yellow]')
    schedule = BudgetSchedule(args.schedule, loop=True)
    config = paths.config_dir()
    demo_yaml = config / 'demo.yaml'
    specs = {
        'perception_node': ('pls_perception.nodes.perception_node',
                            [config / 'perception.yaml', demo_yaml],
                            {'weights': weights, 'device': args.device,
                             'dvfs_backend': args.backend}),
        'dvfs_manager': ('pls_perception.nodes.dvfs_manager_node',
                         [config / 'dvfs_manager.yaml', demo_yaml],
                         {'profile': profile_path, 'closed_loop': not args.open_loop}),
        'image_source': ('pls_perception.nodes.image_source_node', [demo_yaml],
                         {'source': images, 'rate_hz': args.rate_hz}),
    }
    console.print(f'weights {weights}\nimages  {images}\nprofile {profile_path}\n'
                  f'DVFS    {args.backend}\nbudget  {schedule}\nlogs    {log_dir}')
    processes: list[NodeProcess] = []

    def spawn(name: str, module: str, files: list[Path], overrides: dict[str, Any]) -> None:
        processes.append(NodeProcess(
            module, overrides, ['--log-level', args.log_level], log_dir, params_files=files,
            name=name, command=executable(name, module), append_log=False))

    monitor = Monitor(profile)
    view: View | None = None
    try:
        for name, spec in specs.items():
            spawn(name, *spec)
        with console.status('configuring and activating the perception node ...') as status:
            monitor.activate(args.startup_timeout, lambda label, state, s: status.update(
                f'{label} of the perception node: {state}, {s:.0f} s (a first run exports the '
                'ONNX graph)'))
        spawn('budget_schedule', 'pls_perception.nodes.budget_schedule_node', [demo_yaml],
              # + this monitor as a third /latency_budget subscriber
              {'schedule': args.schedule, 'loop': True, 'wait_for_subscribers': 3})
        view = View(live=not args.no_live)
        start = time.monotonic()
        while True:
            elapsed_s = 0.0 if monitor.t0 is None else time.monotonic() - monitor.t0
            if elapsed_s >= args.duration:
                break
            if time.monotonic() - start > args.duration + args.startup_timeout:
                raise TimeoutError('no latency budget received (see budget_schedule.log)')
            dead = [p.name for p in processes if not p.alive()]
            if dead:
                raise RuntimeError(f'{", ".join(dead)} exited early:\n'
                                   + '\n'.join(p.tail() for p in processes if not p.alive()))
            view.update(elapsed_s, args.duration, *monitor.snapshot())
            time.sleep(0.25)
    except (RuntimeError, TimeoutError) as e:
        console.print(f'[bold red]demo failed: {e}[/bold red]')
        return 1
    except KeyboardInterrupt:
        console.print('interrupted: writing what was recorded')
    finally:
        if view is not None:
            view.close()
        for p in reversed(processes):
            p.stop()
        frames, _, _, _ = monitor.snapshot()
        monitor.close()
        shutil.rmtree(work_dir, ignore_errors=True)
    rows = summarize(frames, schedule, args.settle_frames)
    meta = {'duration_s': args.duration, 'schedule': args.schedule, 'weights': weights,
            'weights_label': 'reference weights' if meaningful else 'RANDOM weights',
            'images': images, 'meaningful_labels': meaningful, 'profile': profile_path,
            'dvfs_backend': args.backend, 'closed_loop': not args.open_loop,
            'frames': len(frames),
            'deadline_misses': int(sum(f.deadline_miss for f in frames)),
            'energy_mj_per_frame': (round(float(np.mean([f.energy_mj for f in frames])), 3)
                                    if frames else None)}
    written = write_outputs(out, frames, rows, meta)
    from rich.table import Table
    table = Table(title='pls-demo summary (per budget step)')
    for key in ('start_s', 'budget_ms', 'frames', 'keep_ratio_mean', 'freq_mhz_median',
                'latency_ms_p50', 'latency_ms_p95', 'deadline_misses',
                'frames_to_meet_budget', 'energy_mj_per_frame'):
        table.add_column(key, justify='right')
    for row in rows:
        table.add_row(*(str(row[c.header]) for c in table.columns))
    console.print(table)
    if not meaningful:
        console.print(f'[bold yellow]{RANDOM_BANNER}[/bold yellow]')
    for key, path in written.items():
        console.print(f'{key}: {path}')
    return 0 if frames else 1


if __name__ == '__main__':
    raise SystemExit(main())
