"""Operating-point profiles: what each (keep ratio r, frequency f) costs and how accurate it is.

A profile is a YAML file validated on load. It is the only input the optimizer needs, so the same
decision code runs on the paper's Jetson Orin Nano numbers, on a profile measured by
``pls-profile``
or on a synthetic grid in a test. Every number carries its provenance.

Schema (``schema_version: 1``; a complete example is ``config/profiles/orin_nano_gpu.yaml``)::

    schema_version: 1
    device: {name: str, kind: cpu | gpu}          # kind is required; other keys are free text
    model: {arch: resnet152, engine: torch, ...}  # free-form metadata (weights, input size, ...)
    ratios: [r_1 < ... < r_R]                     # keep ratios in (0, 1]
    frequencies_mhz: [f_1 < ... < f_F]            # positive
    reference_frequency_mhz: f_ref                # one of frequencies_mhz
    accuracy:   {values: [R] in [0, 1], source: S or [R] of S, note: str}
    latency_ms: {values: [R][F] > 0, source: S or [R][F] of S,
                 rule: str (how unmeasured entries were derived, e.g. t(r,f)=t(r,f_ref)*f_ref/f)}
    power_w:    {values: [F] > 0, source: S or [F] of S,
                 model: {kind: two_zone, p_static_w, c_w_per_mhz, f_knee_mhz, fit: {...}}}
    power_scale: {values: [R] > 0, source: ..., note: ...}   # optional, default all 1
    skip_policy: proportional | {name: plan:<stem>, plan_fingerprint: sha256, weights_sha256,
                                 plan_file}      # optional, default proportional
    notes: [str, ...]                             # how the numbers were derived

S (provenance) is one of ``measured`` (measured by pls-profile on this device), ``paper`` (read off
the paper's figures), ``scaled`` (latency derived from a measured/paper value by ``rule``) and
``modelled`` (from a model: power model, block-count interpolation, ...).

Units: accuracy is a fraction (0.93 = 93 %); accuracy loss is relative to the largest ratio
(normally 1.0 = the full network) in the same fraction units. Power of the (r, f) point is
``power_w[f] * power_scale[r]`` (power_scale models lower utilisation of a skipped network), so
energy per frame is ``energy_mj = power_w * power_scale * latency_ms`` (W * ms = mJ) and
``edp`` is in mJ*ms.

``skip_policy`` says which skipping policy the ratios (and so the accuracy per ratio) belong to:
``proportional`` (PLS, the default, so older files stay valid) or a skip plan, identified by the
fingerprint of its removal order (:attr:`pls_perception.skipping.plans.SkipPlan.fingerprint`)
and the
weights it was learned on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pls_perception.errors import PlsError, ProfileError, clip, shown
from pls_perception.io.file_inputs import load_yaml
from pls_perception.operating_points.power_model import TwoZonePowerModel
from pls_perception.paths import config_dir
# A profile records the skip policy its accuracy holds under; PROPORTIONAL_POLICY is re-exported
# for the nodes, which compare policy names.
from pls_perception.skipping.policy_info import (PROPORTIONAL, PROPORTIONAL_POLICY,  # noqa: F401
                                                 SkipPolicyInfo)

SCHEMA_VERSION = 1
SOURCES: tuple[str, ...] = ('measured', 'paper', 'scaled', 'modelled')
DEVICE_KINDS: tuple[str, ...] = ('cpu', 'gpu')
SCALING_RULE = 't(r,f) = t(r,f_ref) * f_ref / f'
# The profile the nodes use when none is given.
DEFAULT_PROFILE_NAME = 'orin_nano_cpu.yaml'




@dataclass(frozen=True, eq=False)
class OperatingPointProfile:
    """Validated arrays: ratios [R], frequencies_mhz [F], accuracy [R], latency_ms [R, F],
    power_w [F], power_scale [R]; ``sources`` maps each array name to a same-shape array of
    provenance strings. Derived energy_mj / edp / accuracy_loss are computed once."""

    device_name: str
    device_kind: str
    ratios: np.ndarray
    frequencies_mhz: np.ndarray
    accuracy: np.ndarray
    latency_ms: np.ndarray
    power_w: np.ndarray
    sources: dict[str, np.ndarray]
    reference_frequency_mhz: float
    latency_rule: str = SCALING_RULE
    power_scale: np.ndarray | None = None
    power_model: TwoZonePowerModel | None = None
    model: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    skip_policy: SkipPolicyInfo = PROPORTIONAL
    energy_mj: np.ndarray = field(init=False)
    edp: np.ndarray = field(init=False)
    accuracy_loss: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        ratios = _array('ratios', self.ratios, 1)
        freqs = _array('frequencies_mhz', self.frequencies_mhz, 1)
        r, f = ratios.size, freqs.size
        accuracy = _array('accuracy', self.accuracy, 1, (r,))
        latency = _array('latency_ms', self.latency_ms, 2, (r, f))
        power = _array('power_w', self.power_w, 1, (f,))
        scale = np.ones(r) if self.power_scale is None else _array(
            'power_scale', self.power_scale, 1, (r,))
        if self.device_kind not in DEVICE_KINDS:
            raise ProfileError(f'device kind must be one of {DEVICE_KINDS}, '
                               f'got {shown(self.device_kind)}')
        if r == 0 or f == 0:
            raise ProfileError(f'need at least one ratio and one frequency, got {r} and {f}')
        if np.any(ratios <= 0) or np.any(ratios > 1) or np.any(np.diff(ratios) <= 0):
            raise ProfileError(f'ratios must be strictly increasing in (0, 1], '
                               f'got {shown(ratios.tolist())}')
        if np.any(freqs <= 0) or np.any(np.diff(freqs) <= 0):
            raise ProfileError(f'frequencies_mhz must be strictly increasing and positive, '
                               f'got {shown(freqs.tolist())}')
        if np.any(accuracy < 0) or np.any(accuracy > 1):
            raise ProfileError(
                f'accuracy must be fractions in [0, 1], got {shown(accuracy.tolist())}')
        for name, arr in (('latency_ms', latency), ('power_w', power), ('power_scale', scale)):
            if np.any(arr <= 0):
                raise ProfileError(f'{name} must be positive, got {shown(arr.tolist())}')
        if not np.any(np.isclose(freqs, self.reference_frequency_mhz)):
            raise ProfileError(f'reference_frequency_mhz must be one of frequencies_mhz, '
                               f'got {shown(self.reference_frequency_mhz)}')
        shapes = {'accuracy': (r,), 'latency_ms': (r, f), 'power_w': (f,), 'power_scale': (r,)}
        sources = {}
        for name, shape in shapes.items():
            src = self.sources.get(name, 'modelled' if name == 'power_scale' else None)
            sources[name] = _sources(name, src, shape)
        for name, arr in (('ratios', ratios), ('frequencies_mhz', freqs), ('accuracy', accuracy),
                          ('latency_ms', latency), ('power_w', power), ('power_scale', scale)):
            arr.setflags(write=False)
            set_(self, name, arr)
        if not isinstance(self.skip_policy, SkipPolicyInfo):
            raise ProfileError(
                f'skip_policy must be a SkipPolicyInfo, got {shown(self.skip_policy)}')
        weights = self.model.get('sha256')
        if (self.skip_policy.weights_sha256 is not None and weights is not None
                and weights != self.skip_policy.weights_sha256):
            raise ProfileError(
                f'skip_policy {shown(self.skip_policy.name)} was learned on weights with sha256 '
                f'{shown(self.skip_policy.weights_sha256)}, but the profile is for weights '
                f'{shown(weights)}')
        set_(self, 'sources', sources)
        set_(self, 'notes', tuple(self.notes))
        energy = scale[:, None] * power[None, :] * latency
        edp = energy * latency
        loss = accuracy[-1] - accuracy
        for name, arr in (('energy_mj', energy), ('edp', edp), ('accuracy_loss', loss)):
            arr.setflags(write=False)
            set_(self, name, arr)

    def ratio_index(self, ratio: float) -> int:
        idx = int(np.argmin(np.abs(self.ratios - ratio)))
        if not math.isclose(self.ratios[idx], ratio, abs_tol=1e-9):
            raise ValueError(f'ratio {ratio!r} is not in the profile {self.ratios.tolist()!r}')
        return idx

    def frequency_index(self, freq_mhz: float) -> int:
        idx = int(np.argmin(np.abs(self.frequencies_mhz - freq_mhz)))
        if not math.isclose(self.frequencies_mhz[idx], freq_mhz, abs_tol=1e-6):
            raise ValueError(f'frequency {freq_mhz!r} MHz is not in the profile '
                             f'{self.frequencies_mhz.tolist()!r}')
        return idx

    def energy_source(self, ri: int, fi: int) -> str:
        """'measured' only if both factors were measured (on device or in the paper)."""
        parts = {self.sources['latency_ms'][ri, fi], self.sources['power_w'][fi],
                 self.sources['power_scale'][ri]}
        return 'measured' if parts <= {'measured', 'paper'} else 'modelled'

    def to_dict(self) -> dict[str, Any]:
        def src(arr: np.ndarray) -> Any:
            values = set(arr.ravel().tolist())
            return values.pop() if len(values) == 1 else arr.tolist()
        out: dict[str, Any] = {
            'schema_version': SCHEMA_VERSION,
            'device': {'name': self.device_name, 'kind': self.device_kind},
            'model': dict(self.model),
            'ratios': _floats(self.ratios),
            'frequencies_mhz': _floats(self.frequencies_mhz),
            'reference_frequency_mhz': float(self.reference_frequency_mhz),
            'skip_policy': self.skip_policy.to_dict(),
            'accuracy': {'values': _floats(self.accuracy),
                         'source': src(self.sources['accuracy'])},
            'latency_ms': {'values': [_floats(row) for row in self.latency_ms],
                           'source': src(self.sources['latency_ms']), 'rule': self.latency_rule},
            'power_w': {'values': _floats(self.power_w), 'source': src(self.sources['power_w'])},
        }
        if self.power_model is not None:
            out['power_w']['model'] = self.power_model.to_dict()
        if not np.allclose(self.power_scale, 1.0):
            out['power_scale'] = {'values': _floats(self.power_scale),
                                  'source': src(self.sources['power_scale'])}
        if self.notes:
            out['notes'] = list(self.notes)
        return out


def _floats(arr: np.ndarray) -> list[float]:
    return [round(float(x), 6) for x in arr]


def _array(name: str, value: Any, ndim: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    try:
        arr = np.array(value, dtype=float)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProfileError(f'{name} must be numeric, got {shown(value)}') from e
    if arr.ndim != ndim or (shape is not None and arr.shape != shape):
        want = shape if shape is not None else f'{ndim}-D'
        raise ProfileError(f'{name} must have shape {want}, got {arr.shape}')
    if not np.all(np.isfinite(arr)):
        raise ProfileError(f'{name} must be finite, got {shown(arr.tolist())}')
    return arr


def _sources(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    if value is None:
        raise ProfileError(f'{name} needs a source (one of {SOURCES}), got none')
    arr = np.array(value, dtype=object)
    if arr.ndim == 0:
        arr = np.full(shape, value, dtype=object)
    if arr.shape != shape:
        raise ProfileError(f'{name} source must be one string or shape {shape}, got {arr.shape}')
    bad = sorted({str(v) for v in arr.ravel() if v not in SOURCES})
    if bad:
        raise ProfileError(f'{name} source must be one of {SOURCES}, got {shown(bad)}')
    arr = arr.astype(str)
    arr.setflags(write=False)
    return arr


def _section(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict) or 'values' not in value:
        raise ProfileError(f'{where}: {key!r} must be a mapping with values and source, '
                           f'got {shown(value)}')
    return value


def profile_from_dict(data: Any, where: str = '<dict>') -> OperatingPointProfile:
    """Build and validate a profile from parsed YAML; errors name ``where`` and the field."""
    if not isinstance(data, dict):
        raise ProfileError(f'{where}: a profile must be a YAML mapping, got {type(data).__name__}')
    if data.get('schema_version') != SCHEMA_VERSION:
        raise ProfileError(f'{where}: schema_version must be {SCHEMA_VERSION}, '
                           f'got {shown(data.get("schema_version"))}')
    missing = [k for k in ('device', 'ratios', 'frequencies_mhz', 'reference_frequency_mhz',
                           'accuracy', 'latency_ms', 'power_w') if k not in data]
    if missing:
        raise ProfileError(f'{where}: missing required keys {missing!r}')
    device = data['device']
    if not isinstance(device, dict) or 'kind' not in device:
        raise ProfileError(
            f'{where}: device must be a mapping with name and kind, got {shown(device)}')
    accuracy = _section(data, 'accuracy', where)
    latency = _section(data, 'latency_ms', where)
    power = _section(data, 'power_w', where)
    scale = data.get('power_scale')
    if scale is not None:
        scale = _section(data, 'power_scale', where)
    power_spec = power.get('model')
    if power_spec is not None and not isinstance(power_spec, dict):
        raise ProfileError(f'{where}: power_w.model must be a mapping, got {shown(power_spec)}')
    try:
        power_model = (TwoZonePowerModel.from_dict(power_spec) if power_spec is not None
                       else None)
        ref = data['reference_frequency_mhz']
        if isinstance(ref, bool) or not isinstance(ref, (int, float)):
            raise ProfileError(f'reference_frequency_mhz must be a number, got {shown(ref)}')
        return OperatingPointProfile(
            device_name=str(device.get('name', 'unnamed')), device_kind=device['kind'],
            ratios=data['ratios'], frequencies_mhz=data['frequencies_mhz'],
            accuracy=accuracy['values'], latency_ms=latency['values'], power_w=power['values'],
            power_scale=None if scale is None else scale['values'],
            sources={'accuracy': accuracy.get('source'), 'latency_ms': latency.get('source'),
                     'power_w': power.get('source'),
                     'power_scale': 'modelled' if scale is None else scale.get('source')},
            reference_frequency_mhz=float(ref),
            latency_rule=str(latency.get('rule', SCALING_RULE)), power_model=power_model,
            model=dict(data.get('model') or {}), notes=tuple(data.get('notes') or ()),
            skip_policy=SkipPolicyInfo.from_dict(data.get('skip_policy')))
    except ProfileError as e:
        raise ProfileError(f'{where}: {e}') from e
    except (ValueError, TypeError, OverflowError) as e:
        raise ProfileError(f'{where}: {clip(str(e), 300)}') from e


def default_profile_path() -> Path:
    """The shipped Orin Nano CPU profile."""
    return config_dir() / 'profiles' / DEFAULT_PROFILE_NAME


def shipped_profiles_for(policy_name: str, device_name: str) -> list[Path]:
    """The shipped profiles (config/profiles) made for ``policy_name``, ``device_name``'s first."""
    found = []
    for path in sorted((config_dir() / 'profiles').glob('*.yaml')):
        try:
            profile = load_profile(path)
        except (PlsError, OSError, ValueError):
            continue
        if profile.skip_policy.name == policy_name:
            found.append((profile.device_name != device_name, str(path)))
    return [Path(p) for _, p in sorted(found)]


def load_profile(path: str | Path) -> OperatingPointProfile:
    """Read and validate a profile YAML; ProfileError on any problem (missing file included)."""
    path = Path(path)
    return profile_from_dict(load_yaml(path, 'profile', ProfileError), where=str(path))


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A path as given if it exists, else a shipped profile by name ('orin_nano_gpu')."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = config_dir() / 'profiles' / f'{path.stem}.yaml'
    if path.parent == Path('.') and shipped.exists():
        return shipped
    known = sorted(p.stem for p in (config_dir() / 'profiles').glob('*.yaml'))
    raise ProfileError(f'no profile {str(name_or_path)!r}: not a file and not one of the shipped '
                       f'profiles {known}')


def save_profile(profile: OperatingPointProfile, path: str | Path) -> Path:
    """Write ``profile`` as YAML (round-trips through :func:`load_profile`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile.to_dict(), sort_keys=False, width=99,
                                   default_flow_style=None))
    return path


def scale_latency(latency_ref_ms: np.ndarray, reference_frequency_mhz: float,
                  frequencies_mhz: np.ndarray) -> np.ndarray:
    """Latency [R, F] from latency at the reference frequency [R] by :data:`SCALING_RULE`."""
    ref = np.asarray(latency_ref_ms, dtype=float)
    freqs = np.asarray(frequencies_mhz, dtype=float)
    return ref[:, None] * (reference_frequency_mhz / freqs)[None, :]
