"""pls-profile: measure an operating-point profile of this machine (latency per ratio x frequency).

Latency: batch-1 inference per keep ratio (warm-up, then the median of ``--repeats`` runs, taken
round-robin over the ratios) through the chosen inference engine. With a real DVFS backend every
frequency is set and measured ('measured'); with the simulated backend the machine runs at its own
clock, which is taken as the reference (highest) frequency of the list, and the other frequencies
are derived by the rule t(r,f) = t(r,f_ref) * f_ref / f ('scaled').
Power: from a power model: another profile's (``--power-from``, default the shipped Orin Nano CPU
profile) or explicit two-zone coefficients (``--power-model``): always 'modelled'.
Accuracy: an accuracy table (``--accuracy``: pls-eval's table1.json, pls-plan compare's
plan_comparison.json, or {'accuracy': {ratio: top1}}) or a CIFAR-10 evaluation of
``--accuracy-images`` images through pls_perception.skipping.evaluation ('measured').
Skip policy: ``--skip-policy <plan.yaml>`` profiles a skip plan instead of PLS: latency and
accuracy are taken under the plan, the table must have been made with that plan (and weights),
and the profile records the plan (skip_policy). ``--from-profile <PLS profile>`` measures nothing:
each plan ratio takes the latency and power of the PLS ratio running the same MACs.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pls_perception import paths
from pls_perception.dvfs import BACKEND_NAMES, DvfsBackend, get_backend
from pls_perception.engines import ENGINE_NAMES, InferenceEngine, make_engine, resolve_engine_name
from pls_perception.engines.int8_quantization import (DEFAULT_CALIBRATION_IMAGES, PRECISIONS,
                                                      CalibrationSet)
from pls_perception.errors import PlsError
from pls_perception.operating_points.policy_profiles import (AccuracyTable, derive_plan_profile,
                                                             load_accuracy_table)
from pls_perception.operating_points.power_model import TwoZonePowerModel
from pls_perception.operating_points.profiles import (SCALING_RULE, OperatingPointProfile,
                                                      load_profile, resolve_profile_path,
                                                      save_profile, scale_latency)
from pls_perception.skipping.evaluation import evaluate_accuracy
from pls_perception.skipping.plans import PlanPolicy, policy_info

DEFAULT_RATIOS = '0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0'


def parse_floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(',') if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}') from e
    if not values:
        raise argparse.ArgumentTypeError(f'expected at least one number, got {text!r}')
    return values


def measure_engine_latency_ms(engine: InferenceEngine, batch: np.ndarray, ratio: float,
                              repeats: int, warmup: int,
                              clock: Callable[[], float] = time.perf_counter) -> float:
    """Median bs=1 latency of ``engine.infer`` at ``ratio`` after ``warmup`` untimed runs."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f'need repeats >= 1 and warmup >= 0, got {repeats!r}, {warmup!r}')
    engine.set_keep_ratio(ratio)
    for _ in range(warmup):
        engine.infer(batch)
    samples = []
    for _ in range(repeats):
        t0 = clock()
        engine.infer(batch)
        samples.append((clock() - t0) * 1e3)
    return statistics.median(samples)


def measure_latency_grid(engine: InferenceEngine, batch: np.ndarray, ratios: Sequence[float],
                         backend: DvfsBackend, frequencies_mhz: Sequence[float], repeats: int,
                         warmup: int, progress: bool = True,
                         clock: Callable[[], float] = time.perf_counter
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Latency [R, F] and its sources: every cell measured on a real backend; on a simulated one
    only the reference (highest) frequency is measured and the rest scaled."""
    freqs = np.asarray(frequencies_mhz, dtype=float)
    sweep = list(freqs) if backend.is_real else [float(freqs.max())]
    latency = np.zeros((len(ratios), freqs.size))
    sources = np.full(latency.shape, 'scaled', dtype=object)
    bar = tqdm(total=len(sweep) * len(ratios) * repeats, desc='profiling', unit='run',
               disable=not progress)
    try:
        for f in sweep:
            fi = int(np.argmin(np.abs(freqs - f)))
            if backend.is_real:
                backend.set_frequency_mhz(f)
            for r in ratios:
                measure_engine_latency_ms(engine, batch, r, 1, warmup, clock)
            # round-robin over the ratios, so a burst of load from other processes hits every
            # ratio alike instead of inflating whichever ratio happened to be running
            samples: list[list[float]] = [[] for _ in ratios]
            for _ in range(repeats):
                for ri, r in enumerate(ratios):
                    samples[ri].append(measure_engine_latency_ms(engine, batch, r, 1, 0, clock))
                    bar.update(1)
            for ri in range(len(ratios)):
                latency[ri, fi] = statistics.median(samples[ri])
                sources[ri, fi] = 'measured'
    finally:
        bar.close()
        if backend.is_real:
            backend.reset()
    if not backend.is_real:
        ref = int(np.argmax(freqs))  # the one column measured
        latency[:, :] = scale_latency(latency[:, ref], freqs[ref], freqs)
    return latency, sources


def power_model_from(args: argparse.Namespace) -> tuple[TwoZonePowerModel, str]:
    if args.power_model:
        p_static, c, knee = args.power_model
        return (TwoZonePowerModel(p_static_w=p_static, c_w_per_mhz=c, f_knee_mhz=knee),
                'given on the command line')
    path = resolve_profile_path(args.power_from)
    prof = load_profile(path)
    if prof.power_model is None:
        raise ValueError(f'{path} has no power model; pass --power-model P_STATIC C KNEE')
    return prof.power_model, f'power model of {path.name} ({prof.device_name})'


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo when available (Linux), else platform.machine()."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.lower().startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='pls-profile', description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n', 1)[1])
    parser.add_argument('--weights', default=None,
                        help='state_dict path | imagenet | random (default: shared reference)')
    parser.add_argument('--arch', default='resnet152', help='torchvision ResNet name')
    parser.add_argument('--engine', choices=ENGINE_NAMES, default='torch')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32',
                        help='onnxruntime graphs: fp32, or int8 (static quantization; accuracy '
                             'then from --accuracy-images run on the int8 graphs, or an int8 '
                             'pls-eval table)')
    parser.add_argument('--int8-calibration-images', type=int,
                        default=DEFAULT_CALIBRATION_IMAGES,
                        help='precision int8: CIFAR-10 train images the graphs are calibrated on')
    parser.add_argument('--ratios', type=parse_floats, default=None,
                        help=f'keep ratios (default: those of --accuracy, else {DEFAULT_RATIOS})')
    parser.add_argument('--skip-policy', default='proportional', metavar='proportional|PLAN',
                        help='proportional (PLS) or a skip-plan YAML (pls-plan learn)')
    parser.add_argument('--from-profile', default=None, metavar='PROFILE',
                        help='with a plan: measure nothing, take each ratio\'s latency and power '
                             'from the PLS ratio of this profile that runs the same MACs')
    parser.add_argument('--backend', choices=BACKEND_NAMES, default='auto')
    parser.add_argument('--sysfs-root', default='/')
    parser.add_argument('--frequencies', type=parse_floats, default=None,
                        help='MHz list (default: the backend\'s; simulated = Orin Nano CPU)')
    parser.add_argument('--repeats', type=int, default=20, help='timed runs per point (median)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed runs per point')
    parser.add_argument('--threads', type=int, default=1,
                        help='intra-op threads (torch, or onnxruntime)')
    parser.add_argument('--power-from', default='orin_nano_cpu',
                        help='profile whose power model is used (default orin_nano_cpu)')
    parser.add_argument('--power-model', type=float, nargs=3, default=None,
                        metavar=('P_STATIC_W', 'C_W_PER_MHZ', 'F_KNEE_MHZ'))
    acc = parser.add_mutually_exclusive_group(required=True)
    acc.add_argument('--accuracy', metavar='TABLE',
                     help='accuracy table made with the same policy and weights (pls-eval '
                          'table1.json, pls-plan compare plan_comparison.json, ...)')
    acc.add_argument('--accuracy-images', type=int, metavar='PER_CLASS',
                     help='evaluate this many CIFAR-10 test images per class')
    parser.add_argument('--device-name', default=None,
                        help='default: the CPU model name from /proc/cpuinfo')
    parser.add_argument('--kind', choices=('cpu', 'gpu'), default='cpu')
    parser.add_argument('--out', required=True, help='output profile YAML')
    parser.add_argument('--no-progress', action='store_true')
    return parser


def _ratios(args: argparse.Namespace, table: AccuracyTable | None) -> list[float]:
    if args.ratios:
        return sorted(args.ratios)
    return table.ratios if table is not None else parse_floats(DEFAULT_RATIOS)


def derive(args: argparse.Namespace) -> OperatingPointProfile:
    """A plan profile from a PLS profile (--from-profile) and the plan's accuracy table."""
    if not args.accuracy:
        raise ValueError('--from-profile takes the accuracy from a table made with the plan '
                         '(--accuracy, e.g. pls-plan compare\'s plan_comparison.json)')
    policy, plan = policy_info(args.skip_policy)
    if plan is None:
        raise ValueError('--from-profile derives a skip-plan profile from a PLS one; give '
                         '--skip-policy <plan.yaml>')
    base_path = resolve_profile_path(args.from_profile)
    base = load_profile(base_path)
    table = load_accuracy_table(args.accuracy, plan, policy, base.model.get('sha256'))
    ratios = _ratios(args, table)
    return derive_plan_profile(base, plan, policy, ratios, table.at(ratios), table.note,
                               base_path.name)


def measure(args: argparse.Namespace) -> OperatingPointProfile:
    """Latency measured on this machine under the skip policy, accuracy from a table or a run."""
    from pls_perception.skipping.weights import load_model
    weights = args.weights or str(paths.reference_weights())
    # random weights are fine for timing; their accuracy must then come from --accuracy
    loaded = load_model(weights, arch=args.arch, allow_random=weights == 'random')
    policy, plan = policy_info(args.skip_policy, loaded.sha256)
    if plan is not None:
        loaded.model.set_policy(PlanPolicy(plan, name=policy.name))
    int8 = args.precision == 'int8'
    if int8 and resolve_engine_name(args.engine) != 'onnxruntime':
        raise ValueError('--precision int8 needs --engine onnxruntime')
    if int8 and args.accuracy and _table_precision(args.accuracy) != 'int8':
        raise ValueError(f'{args.accuracy} was not measured on int8 graphs (pls-eval --engine '
                         'onnxruntime --precision int8); give such a table or --accuracy-images')
    table = (load_accuracy_table(args.accuracy, plan, policy, loaded.sha256)
             if args.accuracy else None)
    ratios = _ratios(args, table)
    model, power_note = power_model_from(args)
    backend = get_backend(args.backend, sysfs_root=args.sysfs_root,
                          **({'frequencies_mhz': args.frequencies}
                             if args.backend == 'simulated' and args.frequencies else {}))
    freqs = sorted(args.frequencies or backend.available_frequencies_mhz())
    # Every ratio built up front: an onnxruntime ratio built on first use would serve the previous
    # ratio meanwhile, and its latency would be recorded for the wrong ratio.
    calibration = (CalibrationSet.from_cifar10(args.int8_calibration_images,
                                               loaded.preprocessing) if int8 else None)
    engine = make_engine(args.engine, loaded, ratios=list(ratios), intra_op_threads=args.threads,
                         precision=args.precision, calibration=calibration)
    h, w = loaded.preprocessing.input_size
    batch = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    try:
        if table is not None:
            accuracy, accuracy_note = table.at(ratios), table.note
        else:   # int8: scored on the int8 graphs themselves
            measured = evaluate_accuracy(loaded, ratios, args.accuracy_images,
                                         engine=engine if int8 else None)
            accuracy = [measured[r] for r in ratios]
            accuracy_note = (f'CIFAR-10 test, {args.accuracy_images} images per class, under '
                             f'{policy.name}' + (', on the int8 graphs' if int8 else ''))
        latency, lat_src = measure_latency_grid(engine, batch, ratios, backend, freqs,
                                                args.repeats, args.warmup,
                                                progress=not args.no_progress)
    finally:
        engine.close()
    rule = SCALING_RULE if not backend.is_real else 'all entries measured (real DVFS sweep)'
    policy_note = ('' if plan is None else
                   f' Skip policy {policy.name} ({args.skip_policy}, fingerprint '
                   f'{plan.fingerprint}): latency and accuracy are the plan\'s.')
    return OperatingPointProfile(
        device_name=args.device_name or f'{cpu_name()} ({platform.node()})',
        device_kind=args.kind, ratios=ratios,
        frequencies_mhz=freqs, accuracy=accuracy, latency_ms=latency,
        power_w=model.power_w(np.asarray(freqs)), power_model=model,
        reference_frequency_mhz=float(max(freqs)),
        sources={'accuracy': 'measured', 'latency_ms': lat_src, 'power_w': 'modelled'},
        latency_rule=rule, skip_policy=policy,
        model={'arch': loaded.model.__class__.__name__, 'weights': loaded.source,
               'sha256': loaded.sha256, 'engine': engine.name, 'precision': args.precision,
               'input_size': [int(h), int(w)], 'batch_size': 1, 'torch_threads': args.threads,
               'repeats': args.repeats, 'warmup': args.warmup, 'dvfs_backend': backend.name},
        notes=(
            f'Latency measured with pls-profile on {platform.node()} ({cpu_name()}), '
            f'DVFS backend {backend.name} ({"real" if backend.is_real else "simulated"}).'
            + ('' if backend.is_real else
               f' The machine ran at its own clock, taken as f_ref = {max(freqs):g} MHz; other '
               f'frequencies follow {SCALING_RULE}.') + policy_note,
            f'Power is modelled: {power_note}.',
            f'Accuracy: {accuracy_note}'))


def _table_precision(path: str) -> str:
    """The precision a pls-eval table1.json was measured at ('fp32' for any other table)."""
    try:
        return str(json.loads(Path(path).read_text()).get('precision', 'fp32'))
    except (OSError, ValueError, AttributeError):
        return 'fp32'      # unreadable or not a mapping: load_accuracy_table says why


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        profile = derive(args) if args.from_profile else measure(args)
    except (PlsError, ValueError, OSError) as e:
        print(f'pls-profile: error: {e}', file=sys.stderr)
        return 2
    print(save_profile(profile, args.out))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
