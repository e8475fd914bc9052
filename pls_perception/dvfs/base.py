"""The one small interface every DVFS backend implements, plus the frequency snapping they share.

Nodes and tools only ever talk to :class:`DvfsBackend`, so the same code drives a real cpufreq
policy, an NVIDIA GPU, a Jetson devfreq node or the simulated backend used on machines without
DVFS.
"""
from __future__ import annotations

import atexit
import logging
import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence

from pls_perception.errors import NotSupported, PermissionDenied

LOG = logging.getLogger(__name__)


def snap_frequency_mhz(freq_mhz: float, available_mhz: Sequence[float]) -> float:
    """Nearest available frequency to ``freq_mhz`` (ties go to the higher one, which is safer
    for a latency budget). Raises ValueError for NaN/inf/non-positive requests or an empty list."""
    if not isinstance(freq_mhz, (int, float)) or not math.isfinite(freq_mhz) or freq_mhz <= 0:
        raise ValueError(f'frequency must be a finite positive number of MHz, got {freq_mhz!r}')
    if not available_mhz:
        raise ValueError(f'no available frequencies to snap to, got {available_mhz!r}')
    return min(available_mhz, key=lambda a: (abs(a - freq_mhz), -a))


def translate_os_error(e: OSError, what: str) -> Exception:
    """Map an OSError from a hardware interface to our exception hierarchy (caller does
    ``raise translate_os_error(e, ...) from e``)."""
    if isinstance(e, PermissionError):
        return PermissionDenied(f'permission denied on {what}: {e.strerror or e}; '
                                f'run as root or grant write access (e.g. a udev rule)')
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return NotSupported(f'{what} is missing or not a regular file ({e.strerror or e}); '
                            f'this machine does not expose that DVFS interface')
    return NotSupported(f'{what} failed: {e}')


class DvfsBackend(ABC):
    """Available frequencies, current, set (snapped), reset, ``emulate`` and identity.

    ``emulate(compute_s)`` is called after each inference with its measured compute time: real
    backends return 0.0 (the hardware already ran at the set frequency); the simulated backend
    sleeps to stretch the inference as if the processor ran at the set frequency.
    """

    name: str = 'base'
    is_real: bool = True

    @abstractmethod
    def available_frequencies_mhz(self) -> list[float]:
        """Sorted ascending list of frequencies this backend can apply."""

    @abstractmethod
    def current_frequency_mhz(self) -> float:
        """The frequency currently applied (read back from the hardware when real)."""

    @abstractmethod
    def _apply_frequency_mhz(self, freq_mhz: float) -> None:
        """Apply an already-snapped frequency."""

    @abstractmethod
    def reset(self) -> None:
        """Restore whatever the backend changed (governor, limits, clocks)."""

    def set_frequency_mhz(self, freq_mhz: float) -> float:
        """Snap ``freq_mhz`` to the nearest available frequency, apply and return it."""
        available = self.available_frequencies_mhz()
        snapped = snap_frequency_mhz(freq_mhz, available)
        if not math.isclose(snapped, freq_mhz, rel_tol=0, abs_tol=1e-6):
            LOG.info('%s: %.3f MHz is not available, snapped to %.3f MHz',
                     self.name, freq_mhz, snapped)
        self._apply_frequency_mhz(snapped)
        return snapped

    def _arm_exit_restore(self) -> None:
        """Make sure :meth:`reset` runs at interpreter exit (called before the first change)."""
        if not getattr(self, '_exit_hook', False):
            atexit.register(self.reset)
            self._exit_hook = True

    def _disarm_exit_restore(self) -> None:
        if getattr(self, '_exit_hook', False):
            atexit.unregister(self.reset)
            self._exit_hook = False

    def writable(self) -> bool:
        """Whether this process may change the frequency (``auto`` skips backends that say no)."""
        return True

    def max_frequency_mhz(self) -> float:
        return max(self.available_frequencies_mhz())

    def emulate(self, compute_s: float, keep_ratio: float = 1.0,
                interrupt: threading.Event | None = None) -> float:
        """Real hardware needs no emulation: return 0.0 seconds slept.

        The simulated backend sleeps so the frame lasts as long as it would at the set
        frequency; ``interrupt`` set cuts that sleep short (a new operating point mid-frame).
        """
        return 0.0

    def describe(self) -> str:
        kind = 'real' if self.is_real else 'simulated'
        return f'{self.name} ({kind}, {self.current_frequency_mhz():.1f} MHz)'

    def __enter__(self) -> DvfsBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()
