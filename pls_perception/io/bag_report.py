"""Reports of a replay: the nodes' outputs read back from a recording bag, scored against
the ground truth (accuracy, latency percentiles, deadline misses, drops, energy per frame), as a
table and a plot. ROS-free; the recording comes from ``pls-bag record`` (nodes/recorder_node.py).
"""
from __future__ import annotations

import json
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pls_perception.errors import BagError
from pls_perception.io.bags import (CLASSIFICATION_MSGTYPE, DIAGNOSTICS_MSGTYPE,
                                    LABEL_INFO_MSGTYPE, NS_PER_S, STRING_MSGTYPE, GroundTruth,
                                    read_messages)


@dataclass(frozen=True)
class Recording:
    """The nodes' outputs read back from a recording bag.

    ``classifications`` has one ``(log_time_ns, result)`` per classification message, in log-time
    order: the frame's ``~/frame_info`` JSON, with ``class_id``, ``label``, ``score`` and
    ``top_k`` from its ``vision_msgs/Classification`` when that was recorded; ``source`` says
    which (``typed`` or ``frame_info``). ``class_map`` is the recorded ``~/label_info``.
    """

    classifications: tuple[tuple[int, dict], ...]
    operating_points: tuple[tuple[int, dict], ...]  # (log_time_ns, JSON payload)
    diagnostics: int
    class_map: dict[int, str] = field(default_factory=dict)


def stamp_to_ns(stamp: Any) -> int:
    """A JSON stamp as integer nanoseconds: ``{'sec', 'nanosec'}``, ``[sec, nanosec]`` or ns."""
    if isinstance(stamp, dict):
        return int(stamp['sec']) * NS_PER_S + int(stamp['nanosec'])
    if isinstance(stamp, (list, tuple)) and len(stamp) == 2:
        return int(stamp[0]) * NS_PER_S + int(stamp[1])
    if isinstance(stamp, int):
        return stamp
    raise ValueError(f'stamp must be {{sec, nanosec}}, [sec, nanosec] or int ns, got {stamp!r}')


def read_recording(path: str | Path) -> Recording:
    """Results (``*/classification`` typed, ``*/frame_info`` JSON), ``*/label_info`` and
    ``*/operating_point``; ``BagError`` for a message that is not what its topic promises."""
    typed, frame_info, operating_points, class_map, diagnostics = [], [], [], {}, 0
    for topic, msgtype, log_time_ns, msg in read_messages(path):
        if msgtype == DIAGNOSTICS_MSGTYPE:
            diagnostics += 1
        elif msgtype == CLASSIFICATION_MSGTYPE:
            typed.append((log_time_ns, _typed_result(topic, log_time_ns, msg)))
        elif msgtype == LABEL_INFO_MSGTYPE:
            class_map = {int(c.class_id): str(c.class_name) for c in msg.class_map}
        elif msgtype == STRING_MSGTYPE and topic.endswith(('/frame_info', '/operating_point')):
            try:
                payload = json.loads(msg.data)
            except json.JSONDecodeError as e:
                raise BagError(f'{topic} message at {log_time_ns} ns is not JSON: {e}') from e
            (frame_info if topic.endswith('/frame_info') else operating_points).append(
                (log_time_ns, payload))
    return Recording(_merge_results(typed, frame_info, class_map), tuple(operating_points),
                     diagnostics, class_map)


def _typed_result(topic: str, log_time_ns: int, msg: Any) -> dict[str, Any]:
    """A recorded ``vision_msgs/Classification`` in the frame_info JSON layout."""
    try:
        top_k = [{'class_id': int(h.class_id), 'score': float(h.score)} for h in msg.results]
    except ValueError as e:
        raise BagError(f'{topic} message at {log_time_ns} ns: class_id is not a class index '
                       f'({e})') from e
    if not top_k:
        raise BagError(f'{topic} message at {log_time_ns} ns has no results')
    stamp = msg.header.stamp
    return {'stamp': {'sec': int(stamp.sec), 'nanosec': int(stamp.nanosec)},
            'frame_id': msg.header.frame_id, 'class_id': top_k[0]['class_id'],
            'score': top_k[0]['score'], 'top_k': top_k}


def _merge_results(typed: Sequence[tuple[int, dict]], frame_info: Sequence[tuple[int, dict]],
                   class_map: dict[int, str]) -> tuple[tuple[int, dict], ...]:
    """Each typed result joined with the frame_info of its frame (same stamp, in order); the
    frame_info of frames without a typed result stands alone."""
    waiting: defaultdict[int, deque[dict]] = defaultdict(deque)
    for _, info in frame_info:
        waiting[stamp_to_ns(info['stamp'])].append(info)
    merged = []
    for log_time_ns, result in typed:
        queued = waiting.get(stamp_to_ns(result['stamp']))
        info = queued.popleft() if queued else {}
        top_k = [{**h, 'label': class_map.get(h['class_id'], '')} for h in result['top_k']]
        label = class_map.get(result['class_id'], info.get('label', ''))
        merged.append((log_time_ns, {**info, **result, 'label': label, 'top_k': top_k,
                                     'source': 'typed'}))
    unmatched = {id(info) for queued in waiting.values() for info in queued}
    merged += [(t, {**info, 'source': 'frame_info'}) for t, info in frame_info
               if id(info) in unmatched]
    return tuple(sorted(merged, key=lambda item: item[0]))


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {'p50': None, 'p90': None, 'p99': None, 'max': None, 'mean': None}
    arr = np.asarray(values, dtype=np.float64)
    return {'p50': float(np.percentile(arr, 50)), 'p90': float(np.percentile(arr, 90)),
            'p99': float(np.percentile(arr, 99)), 'max': float(arr.max()),
            'mean': float(arr.mean())}


def _budget_at(operating_points: Sequence[tuple[int, dict]], time_ns: int) -> dict | None:
    """The latest operating point published at or before ``time_ns``."""
    latest = None
    for t, point in operating_points:
        if t > time_ns:
            break
        latest = point
    return latest


def compute_report(recording: Recording, truth: GroundTruth,
                   deadline_ms: float | None = None) -> dict[str, Any]:
    """Accuracy, latency percentiles, deadline misses, drops and energy per frame.

    Results (typed where recorded, see ``Recording``) are matched to ground truth by header
    stamp. The deadline of a frame is ``deadline_ms`` when given, else the ``budget_ms`` of the
    operating point in effect when it was classified (no deadline when neither exists). Energy
    per frame is the frame_info's ``energy_mj`` when the node reports it, else the operating
    point's predicted ``energy_mj``.
    """
    labels = truth.by_stamp()
    rows = []
    unknown = duplicates = 0
    seen: set[int] = set()
    ops = sorted(recording.operating_points, key=lambda item: item[0])
    for log_time_ns, payload in recording.classifications:
        stamp = stamp_to_ns(payload['stamp'])
        if stamp not in labels:
            unknown += 1
            continue
        if stamp in seen:
            duplicates += 1
            continue
        seen.add(stamp)
        point = _budget_at(ops, log_time_ns)
        budget = deadline_ms if deadline_ms is not None else (
            point.get('budget_ms') if point else None)
        energy = payload.get('energy_mj')  # null when the node has no energy profile
        if energy is None and point:
            energy = point.get('energy_mj')
        latency = payload.get('latency_ms')
        rows.append({
            'stamp_ns': stamp, 'time_ns': log_time_ns, 'label': labels[stamp],
            'class_id': int(payload['class_id']), 'keep_ratio': payload.get('keep_ratio'),
            'freq_mhz': payload.get('frequency_mhz'),
            'latency_ms': latency, 'budget_ms': budget, 'energy_mj': energy,
            'missed': bool(budget is not None and latency is not None and latency > budget),
            'source': payload['source']})
    dropped = sorted(set(labels) - seen)
    labelled = [r for r in rows if r['label'] >= 0]
    correct = sum(r['class_id'] == r['label'] for r in labelled)
    n_labelled_truth = sum(1 for v in labels.values() if v >= 0)
    latencies = [r['latency_ms'] for r in rows if r['latency_ms'] is not None]
    energies = [r['energy_mj'] for r in rows if r['energy_mj'] is not None]
    with_deadline = [r for r in rows if r['budget_ms'] is not None]
    return {
        'frames_sent': len(labels),
        'frames_classified': len(rows),
        'frames_dropped': len(dropped),
        'dropped_stamps_ns': dropped,
        'unknown_stamps': unknown,
        'duplicates': duplicates,
        'accuracy_classified': correct / len(labelled) if labelled else None,
        'accuracy_all': correct / n_labelled_truth if n_labelled_truth else None,
        'latency_ms': _percentiles(latencies),
        'deadline_frames': len(with_deadline),
        'deadline_misses': sum(r['missed'] for r in with_deadline),
        'energy_per_frame_mj': float(np.mean(energies)) if energies else None,
        'results_typed': sum(r['source'] == 'typed' for r in rows),
        'results_frame_info': sum(r['source'] == 'frame_info' for r in rows),
        'label_info_matches_ground_truth': _same_class_names(recording.class_map, truth),
        'operating_points': len(recording.operating_points),
        'diagnostics': recording.diagnostics,
        'frames': rows,
    }


def _same_class_names(class_map: dict[int, str], truth: GroundTruth) -> bool | None:
    """Whether the node's ``~/label_info`` names the ground truth's classes alike (class ids
    are compared, so a different class order makes the accuracy meaningless); None: unknown."""
    if not class_map or not truth.class_names:
        return None
    return all(class_map.get(i) == name for i, name in enumerate(truth.class_names))


def report_table(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline figures of a report as ``(name, value)`` rows."""
    def fmt(value: Any, spec: str = '.2f') -> str:
        return '-' if value is None else format(value, spec)

    lat = report['latency_ms']
    return [
        ('frames sent', str(report['frames_sent'])),
        ('frames classified', str(report['frames_classified'])),
        ('frames dropped', str(report['frames_dropped'])),
        ('accuracy (classified)', fmt(report['accuracy_classified'], '.4f')),
        ('accuracy (drops count as wrong)', fmt(report['accuracy_all'], '.4f')),
        ('latency p50 / p90 / p99 / max [ms]',
         ' / '.join(fmt(lat[k]) for k in ('p50', 'p90', 'p99', 'max'))),
        ('deadline misses', f'{report["deadline_misses"]} of {report["deadline_frames"]}'),
        ('energy per frame [mJ]', fmt(report['energy_per_frame_mj'], '.3f')),
        ('results read from', f'vision_msgs/Classification {report["results_typed"]}, '
                              f'frame_info JSON {report["results_frame_info"]}'),
        ('label_info class names = ground truth',
         {None: '-', True: 'yes', False: 'NO: class ids mean different classes'}[
             report['label_info_matches_ground_truth']]),
    ]


def plot_report(report: dict[str, Any], png: str | Path) -> Path:
    """Latency (with budget and misses), keep ratio and frequency per frame over time (PNG)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = sorted(report['frames'], key=lambda r: r['time_ns'])
    t0 = rows[0]['time_ns'] if rows else 0
    t_s = [(r['time_ns'] - t0) / NS_PER_S for r in rows]
    fig, (ax_lat, ax_ratio) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    ax_lat.plot(t_s, [r['latency_ms'] for r in rows], '.', ms=3, label='latency')
    ax_lat.step(t_s, [r['budget_ms'] for r in rows], where='post', color='tab:red',
                label='budget')
    missed = [(t, r['latency_ms']) for t, r in zip(t_s, rows) if r['missed']]
    if missed:
        ax_lat.plot(*zip(*missed), 'x', color='tab:red', label='deadline miss')
    ax_lat.set_ylabel('latency [ms]')
    ax_lat.legend(loc='upper right')
    ax_lat.set_title(f'{report["frames_classified"]}/{report["frames_sent"]} frames, '
                     f'{report["frames_dropped"]} dropped, accuracy '
                     f'{report["accuracy_classified"] or 0:.3f}')
    ax_ratio.step(t_s, [r['keep_ratio'] for r in rows], where='post', label='keep ratio')
    ax_ratio.set_ylabel('keep ratio')
    ax_ratio.set_ylim(0.0, 1.05)
    ax_ratio.set_xlabel('time since first classification [s]')
    if any(r['freq_mhz'] is not None for r in rows):
        ax_freq = ax_ratio.twinx()
        ax_freq.step(t_s, [r['freq_mhz'] for r in rows], where='post', color='tab:orange',
                     label='frequency')
        ax_freq.set_ylabel('frequency [MHz]', color='tab:orange')
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


