"""Two hosts over DDS: perception and camera on one, the DVFS manager and the planner on another.

AV stacks put perception and planning on different computers. Two Linux network namespaces
joined by a veth pair stand in for them (root only; skipped where namespaces cannot be made):
host A runs the perception node and its image source, host B the DVFS manager and a budget
publisher. Every process is a real executable; what crosses the link is Fast DDS over UDP
(multicast discovery on the link, unicast data). The test shows discovery, classifications
received on B, a budget on B applied on A, and a 5 s link outage: the manager reports the node
unavailable, the node keeps classifying its local frames, and the latest point (solved for a
budget sent during the outage) is applied once the link is back. It prints its timings.

Observers on each host are this file run as a script (``observe``): a
:class:`~pls_perception.testing.graph_probe.PipelineProbe` whose receptions are printed as JSON
lines with their CLOCK_MONOTONIC receive time (the same clock in every namespace), and which
publishes ``budget <ms>`` lines read from stdin.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip('rclpy')

from pls_perception import paths  # noqa: E402
from pls_perception.operating_points.optimizer import solve  # noqa: E402
from pls_perception.operating_points.profiles import default_profile_path  # noqa: E402
from pls_perception.operating_points.profiles import load_profile  # noqa: E402
from pls_perception.testing.graph_probe import (MANAGER_MODULE, PERCEPTION_MODULE,  # noqa: E402
                                                NodeProcess)

SOURCE_MODULE = 'pls_perception.nodes.image_source_node'
# The /30 of the link; these addresses exist only inside the namespaces the test creates.
ADDRESS_A, ADDRESS_B = '10.231.0.1/30', '10.231.0.2/30'
VETH_A, VETH_B = 'pls2h_a', 'pls2h_b'
BUDGET_MS, OUTAGE_BUDGET_MS = 300.0, 60.0
ACCURACY_LOSS_MAX = 0.05
OUTAGE_S = 5.0
RATE_HZ = 2.0


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(['ip', *args], capture_output=True, text=True, timeout=20)


@dataclass(frozen=True)
class Link:
    """Two namespaces ``a`` and ``b`` joined by a veth pair."""

    a: str
    b: str

    def set_up(self, up: bool) -> None:
        """Take host A's end of the link down or up (B sees the carrier go)."""
        state = 'up' if up else 'down'
        result = _ip('-n', self.a, 'link', 'set', VETH_A, state)
        assert result.returncode == 0, result.stderr
        if up:  # taking a link down drops its routes; discovery needs the multicast one
            _ip('-n', self.a, 'route', 'replace', '224.0.0.0/4', 'dev', VETH_A)

    def command(self, host: str, *argv: str) -> list[str]:
        return ['ip', 'netns', 'exec', host, *argv]


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0 or shutil.which('ip') is None:
        pytest.skip('needs root and iproute2 to create network namespaces')
    pair = Link(f'pls2h_a_{os.getpid()}', f'pls2h_b_{os.getpid()}')
    created: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            result = _ip('netns', 'add', ns)
            if result.returncode != 0:
                pytest.skip(f'cannot create network namespace {ns}: {result.stderr.strip()}')
            created.append(ns)
        steps = [('link', 'add', VETH_A, 'netns', pair.a, 'type', 'veth', 'peer', 'name',
                  VETH_B, 'netns', pair.b)]
        for ns, dev, address in ((pair.a, VETH_A, ADDRESS_A), (pair.b, VETH_B, ADDRESS_B)):
            steps += [('-n', ns, 'link', 'set', 'lo', 'up'),
                      ('-n', ns, 'addr', 'add', address, 'dev', dev),
                      ('-n', ns, 'link', 'set', dev, 'multicast', 'on'),
                      ('-n', ns, 'link', 'set', dev, 'up'),
                      ('-n', ns, 'route', 'add', '224.0.0.0/4', 'dev', dev)]
        for step in steps:
            result = _ip(*step)
            if result.returncode != 0:
                pytest.skip(f'cannot set up the veth link (ip {" ".join(step)}): '
                            f'{result.stderr.strip()}')
        yield pair
    finally:
        for ns in created:
            _ip('netns', 'del', ns)  # removes the veth pair with it


@dataclass
class Event:
    t_s: float
    kind: str
    data: Any


class Observer:
    """This file's ``observe`` mode in a namespace: events from its stdout, budgets to stdin."""

    def __init__(self, command: list[str], log_path: Path) -> None:
        self._log = log_path.open('w')
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED='1'))
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._cond:
                self.events.append(Event(event['t'], event['kind'], event['data']))
                self._cond.notify_all()

    def budget(self, budget_ms: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f'budget {budget_ms!r}\n')
        self.proc.stdin.flush()

    def wait_for(self, kind: str, predicate: Callable[[Any], bool], timeout_s: float,
                 after_s: float = 0.0) -> Event | None:
        """The first ``kind`` event received after ``after_s`` (monotonic) matching."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for event in self.events:
                    if event.kind == kind and event.t_s >= after_s and predicate(event.data):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.5))

    def count(self, kind: str, start_s: float, end_s: float) -> int:
        with self._cond:
            return sum(1 for e in self.events if e.kind == kind and start_s <= e.t_s < end_s)

    def stop(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # end of commands: the observer exits
        try:
            self.proc.wait(15.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10.0)
        self._reader.join(5.0)
        self._log.close()


def _point(budget_ms: float) -> tuple[float, float]:
    point = solve(load_profile(default_profile_path()), budget_ms, ACCURACY_LOSS_MAX)
    return point.keep_ratio, point.freq_mhz


def _runs(point: tuple[float, float]) -> Callable[[Any], bool]:
    return lambda c: (c['keep_ratio'], c['frequency_mhz']) == point


@pytest.mark.timeout(600)
def test_two_hosts_discovery_budget_and_link_outage(link: Link, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    first, latest = _point(BUDGET_MS), _point(OUTAGE_BUDGET_MS)
    assert first != latest, 'the outage budget must move the operating point'
    # UDP only: the shared-memory transport could carry data between processes that share
    # /dev/shm however the link is. Discovery over the link's subnet, not localhost only.
    monkeypatch.setenv('FASTDDS_BUILTIN_TRANSPORTS', 'UDPv4')
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SUBNET')
    monkeypatch.delenv('ROS_LOCALHOST_ONLY', raising=False)
    weights = paths.reference_weights()
    images = paths.cifar10_tar()
    if not images.is_file():
        from pls_perception.tools.demo import generate_frames
        images = generate_frames(tmp_path / 'frames', 10)
    perception = {'weights': str(weights) if weights.is_file() else 'random',
                  'engine': 'torch', 'dvfs_backend': 'simulated', 'num_threads': 1,
                  'warmup_frames': 1, 'autostart': True}
    source = {'source': str(images), 'per_class': 1, 'rate_hz': RATE_HZ, 'loop': True}
    manager = {'profile': str(default_profile_path()), 'accuracy_loss_max': ACCURACY_LOSS_MAX,
               'closed_loop': False, 'hysteresis': 0.0, 'poll_period_s': 0.5,
               'request_timeout_s': 1.5, 'retry_initial_s': 0.2, 'retry_max_s': 1.0}

    def node(host: str, module: str, parameters: dict[str, Any], name: str) -> NodeProcess:
        return NodeProcess(module, parameters, log_dir=tmp_path, name=name,
                           command=link.command(host, sys.executable, '-m', module))

    def observer(host: str, name: str) -> Observer:
        return Observer(link.command(host, sys.executable, __file__, 'observe', '--ros-args',
                                     '-r', f'__node:={name}'), tmp_path / f'{name}.log')

    processes: list[NodeProcess] = []
    observers: list[Observer] = []
    try:
        t0 = time.monotonic()
        observers += [observer(link.a, 'observer_a'), observer(link.b, 'observer_b')]
        obs_a, obs_b = observers
        processes += [node(link.a, PERCEPTION_MODULE, perception, 'perception_a'),
                      node(link.a, SOURCE_MODULE, source, 'image_source_a'),
                      node(link.b, MANAGER_MODULE, manager, 'manager_b')]
        mgr = processes[2]

        # Discovery across the link.
        local = obs_a.wait_for('classification', lambda c: True, 300.0)
        assert local is not None, processes[0].tail(30)
        remote = obs_b.wait_for('classification', lambda c: True, 60.0)
        assert remote is not None, 'no classification crossed the link'
        # Discovery alone: a participant joining on B once A runs (up to a frame period more).
        observers.append(observer(link.b, 'observer_late'))
        joined = observers[-1].wait_for('ready', lambda d: True, 60.0)
        assert joined is not None
        late = observers[-1].wait_for('classification', lambda c: True, 30.0)
        assert late is not None, 'a late participant on B discovered nothing'
        available = obs_b.wait_for('manager', lambda s: s.get('target_available') == 'True',
                                   60.0)
        assert available is not None, mgr.tail(30)

        # Budget on B -> operating point applied on A, seen in A's classifications on B.
        sent = time.monotonic()
        obs_b.budget(BUDGET_MS)
        applied = obs_b.wait_for('classification', _runs(first), 60.0, after_s=sent)
        assert applied is not None, mgr.tail(30)

        # The link goes down for OUTAGE_S; the planner asks for a new budget meanwhile.
        down = time.monotonic()
        link.set_up(False)
        obs_b.budget(OUTAGE_BUDGET_MS)
        gone = obs_b.wait_for('point', lambda p: not p['target_available'], OUTAGE_S,
                              after_s=down)
        assert gone is not None, mgr.tail(30)
        time.sleep(max(0.0, down + OUTAGE_S - time.monotonic()))
        up = time.monotonic()
        link.set_up(True)
        local_during = obs_a.count('classification', down + 1.0, up)
        assert local_during >= 2, 'the node stopped classifying its local frames'
        assert obs_a.wait_for('classification', _runs(first), 1.0, after_s=down) is not None
        assert obs_b.count('classification', down + 1.0, up) == 0, 'data crossed a down link'

        # Back: the latest point is applied, and A's classifications reach B again.
        reapplied = obs_b.wait_for('point', lambda p: p['budget_ms'] == OUTAGE_BUDGET_MS
                                   and p['applied'] and p['target_available'], 60.0,
                                   after_s=up)
        assert reapplied is not None, mgr.tail(30)
        runs_latest = obs_b.wait_for('classification', _runs(latest), 60.0, after_s=up)
        assert runs_latest is not None, mgr.tail(30)
        log = mgr.log_text()
        assert log.count('/pls_perception_node went away') == 1, log
        assert 'no answer to get_parameters' in log
        print(f'\ntwo hosts over veth ({ADDRESS_A} <-> {ADDRESS_B}), times in s:'
              f'\n  start -> first classification on A (startup, configure) '
              f'{local.t_s - t0:.2f}'
              f'\n  participant joining on B -> its first classification from A (discovery '
              f'+ up to {1.0 / RATE_HZ:g} s frame period) {late.t_s - joined.t_s:.2f}'
              f'\n  start -> manager reports the node available {available.t_s - t0:.2f}'
              f'\n  budget {BUDGET_MS:g} ms -> classification on B at {first} '
              f'{applied.t_s - sent:.2f}'
              f'\n  link down -> manager reports the node unavailable {gone.t_s - down:.2f}'
              f'\n  classifications on A during the {OUTAGE_S:g} s outage {local_during}'
              f'\n  link up -> point for {OUTAGE_BUDGET_MS:g} ms applied (manager) '
              f'{reapplied.t_s - up:.2f}'
              f'\n  link up -> classification on B at {latest} {runs_latest.t_s - up:.2f}')
    finally:
        for obs in observers:
            obs.stop()
        for proc in reversed(processes):
            proc.stop()


# ---------------------------------------------------------------------- observer process
def _observe() -> int:
    """Print what this host receives as JSON lines; publish the budgets read from stdin."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from pls_perception.testing.graph_probe import ReceivedLog, probe_session

    def emit(t_s: float, kind: str, data: Any) -> None:
        print(json.dumps({'t': t_s, 'kind': kind, 'data': data}), flush=True)

    with probe_session() as probe:
        points = ReceivedLog()
        probe.create_subscription(String, '/dvfs_manager/operating_point',
                                  lambda m: points.add(json.loads(m.data)), QoSProfile(
                                      depth=10, reliability=ReliabilityPolicy.RELIABLE,
                                      durability=DurabilityPolicy.TRANSIENT_LOCAL))
        emit(time.monotonic(), 'ready', probe.get_name())
        done = threading.Event()

        def commands() -> None:
            for line in sys.stdin:
                deadline = time.monotonic() + 30.0
                while (probe.budget_pub.get_subscription_count() == 0
                       and time.monotonic() < deadline):
                    time.sleep(0.05)
                emit(probe.publish_budget(float(line.split()[1])), 'budget', line.strip())
            done.set()
        threading.Thread(target=commands, daemon=True).start()

        logs = {'classification': probe.classifications, 'point': points,
                'manager': probe.diagnostics}
        seen = dict.fromkeys(logs, 0)
        while not done.wait(0.05):
            for kind, log in logs.items():
                with log.cond:
                    new = log.items[seen[kind]:]
                seen[kind] += len(new)
                for item in new:
                    # /diagnostics: only the manager's status, as {key: value}
                    data = probe.node_status(item, 'dvfs_manager') if kind == 'manager' \
                        else item.data
                    if data:
                        emit(item.t_s, kind, data)
    return 0


if __name__ == '__main__' and sys.argv[1:2] == ['observe']:
    raise SystemExit(_observe())
