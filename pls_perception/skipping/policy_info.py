"""Which skip policy a set of keep ratios belongs to: PLS, or one learned skip plan.

Profiles record it (their accuracy column holds only under that policy) and skip plans produce
it; the nodes report its name so the DVFS manager can check they agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pls_perception.errors import ProfileError, shown

PROPORTIONAL_POLICY = 'proportional'
_HEX = frozenset('0123456789abcdef')


def is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


@dataclass(frozen=True)
class SkipPolicyInfo:
    """Which skipping policy a profile's ratios belong to: PLS, or one skip plan.

    ``name`` is the policy's name as the nodes report it ('proportional' or 'plan:<file stem>');
    a plan also carries ``plan_fingerprint`` (sha256 of its removal order: what makes two plans
    the same), the sha256 of the weights it was learned on and, for the reader, its file.
    """

    name: str = PROPORTIONAL_POLICY
    plan_fingerprint: str | None = None
    weights_sha256: str | None = None
    plan_file: str | None = None

    def __post_init__(self) -> None:
        if self.is_proportional:
            extra = [k for k in ('plan_fingerprint', 'weights_sha256', 'plan_file')
                     if getattr(self, k) is not None]
            if extra:
                raise ProfileError(f'skip_policy {PROPORTIONAL_POLICY!r} takes no {extra!r}')
            return
        if not isinstance(self.name, str) or not self.name.startswith('plan:') \
                or len(self.name) == len('plan:'):
            raise ProfileError(f"skip_policy name must be {PROPORTIONAL_POLICY!r} or "
                               f"'plan:<name>', got {shown(self.name)}")
        if not is_sha256(self.plan_fingerprint):
            raise ProfileError(f'skip_policy plan_fingerprint must be 64 lowercase hex digits, '
                               f'got {shown(self.plan_fingerprint)}')
        if self.weights_sha256 is not None and not is_sha256(self.weights_sha256):
            raise ProfileError(f'skip_policy weights_sha256 must be 64 lowercase hex digits, '
                               f'got {shown(self.weights_sha256)}')
        if self.plan_file is not None and not isinstance(self.plan_file, str):
            raise ProfileError(
                f'skip_policy plan_file must be a string, got {shown(self.plan_file)}')

    @property
    def is_proportional(self) -> bool:
        return self.name == PROPORTIONAL_POLICY

    def to_dict(self) -> str | dict[str, Any]:
        if self.is_proportional:
            return PROPORTIONAL_POLICY
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, value: Any) -> SkipPolicyInfo:
        """'proportional' (or absent: None) or a mapping of the fields; ProfileError else."""
        if value is None or value == PROPORTIONAL_POLICY:
            return cls()
        if not isinstance(value, dict):
            raise ProfileError(f"skip_policy must be {PROPORTIONAL_POLICY!r} or a mapping "
                               f"{{name: 'plan:<name>', plan_fingerprint, weights_sha256, "
                               f"plan_file}}, got {shown(value)}")
        unknown = sorted(set(value) - {'name', 'plan_fingerprint', 'weights_sha256', 'plan_file'})
        if unknown:
            raise ProfileError(f'skip_policy has unknown keys {shown(unknown)}')
        return cls(**value)


PROPORTIONAL = SkipPolicyInfo()
