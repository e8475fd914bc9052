"""A DVFS backend that survives its hardware going away mid-run.

A real backend can fail long after it was opened: a udev rule or a hypervisor revokes write
access, a cpufreq policy disappears when its CPUs go offline, a driver is reloaded.
:class:`FailoverBackend` wraps any backend and, on the first BackendError/OSError, logs one ERROR,
records the fault (for /diagnostics) and switches for good to a :class:`SimulatedBackend` with the
same frequency table at the last requested frequency, so perception keeps running with emulated
latency instead of crashing.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from pls_perception.dvfs.base import DvfsBackend
from pls_perception.dvfs.simulated import SimulatedBackend
from pls_perception.errors import BackendError

LOG = logging.getLogger(__name__)
T = TypeVar('T')
FAULTS: tuple[type[Exception], ...] = (BackendError, OSError)


class FailoverBackend(DvfsBackend):
    """Delegates to ``backend`` until it fails, then to a simulated backend (permanently).

    ``fault`` (None while healthy) and ``fault_monotonic`` (``time.monotonic()``) say what failed
    and when; ``reset_error`` holds why the real backend could not be reset, if it could not.
    One re-entrant lock serialises everything, so an inference thread and a diagnostics timer may
    share one instance.
    """

    def __init__(self, backend: DvfsBackend,
                 sleep_fn: Callable[[float], None] | None = None) -> None:
        self._inner = backend
        # Cached now: after a fault the files that list them may be gone.
        self._frequencies_mhz = list(backend.available_frequencies_mhz())
        self._sleep = sleep_fn
        self._lock = threading.RLock()
        self._simulated: SimulatedBackend | None = None
        self._requested_mhz: float | None = None
        self._fault: str | None = None
        self._fault_monotonic: float | None = None
        self._reset_error: str | None = None
        self._real_reset_tried = False

    # -- what /diagnostics reads -------------------------------------------------------------

    @property
    def wrapped(self) -> DvfsBackend:
        """The backend this one was built around (real or not)."""
        return self._inner

    @property
    def fault(self) -> str | None:
        """Why the wrapped backend was abandoned ('<operation>: <error>'), None while healthy."""
        return self._fault

    @property
    def fault_monotonic(self) -> float | None:
        """``time.monotonic()`` at the fault (age = monotonic() - this), None while healthy."""
        return self._fault_monotonic

    @property
    def reset_error(self) -> str | None:
        """Why resetting the abandoned real backend failed, if it did."""
        return self._reset_error

    @property  # type: ignore[override]
    def name(self) -> str:
        """The wrapped backend's name, or 'simulated (<name> failed: <fault>)' after a fault."""
        with self._lock:
            if self._fault is None:
                return self._inner.name
            return f'simulated ({self._inner.name} failed: {self._fault})'

    @property  # type: ignore[override]
    def is_real(self) -> bool:
        """False once failed over: latency is emulated and energy modelled from then on."""
        with self._lock:
            return self._fault is None and bool(self._inner.is_real)

    # -- the DvfsBackend interface -------------------------------------------------------------

    def available_frequencies_mhz(self) -> list[float]:
        # The table read at construction: it does not change, and the fallback uses it too.
        return list(self._frequencies_mhz)

    def current_frequency_mhz(self) -> float:
        return self._call('current_frequency_mhz', lambda b: b.current_frequency_mhz())

    def _apply_frequency_mhz(self, freq_mhz: float) -> None:
        # Reached through DvfsBackend.set_frequency_mhz, which snapped (or raised ValueError).
        with self._lock:
            self._requested_mhz = freq_mhz
            self._call('set_frequency_mhz', lambda b: b._apply_frequency_mhz(freq_mhz))

    def writable(self) -> bool:
        return self._call('writable', lambda b: b.writable())

    def emulate(self, compute_s: float, keep_ratio: float = 1.0,
                interrupt: threading.Event | None = None) -> float:
        with self._lock:
            simulated = self._simulated
        if simulated is not None:        # it sleeps: outside the lock, so diagnostics never wait
            return simulated.emulate(compute_s, keep_ratio, interrupt)
        return self._call('emulate', lambda b: b.emulate(compute_s, keep_ratio, interrupt))

    def describe(self) -> str:
        with self._lock:
            if self._simulated is None:
                text = self._call('describe', lambda b: b.describe())
                if self._simulated is None:  # describe itself may have failed over
                    return text
            return f'{self.name} at {self._simulated.current_frequency_mhz():.1f} MHz'

    def reset(self) -> None:
        """Reset the active backend; never raises once failed over.

        After a fault the real backend's reset is still tried once (it may yet restore the
        governor or limits it changed); its error is swallowed and kept in ``reset_error``.
        """
        with self._lock:
            self._requested_mhz = None        # a later failover starts from the reset state
            if not self._real_reset_tried:
                healthy = self._simulated is None
                try:
                    self._inner.reset()
                except (FAULTS if healthy else Exception) as e:
                    self._reset_error = str(e)
                    self._inner._disarm_exit_restore()   # its atexit reset would fail again
                    if healthy:
                        self._fail_over('reset', e)
                    else:
                        LOG.warning('DVFS backend %s could not be reset after its fault: %s',
                                    self._inner.name, e)
                self._real_reset_tried = self._simulated is not None
            if self._simulated is not None:
                self._simulated.reset()

    # -- failover ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[DvfsBackend], T]) -> T:
        """``fn`` on the wrapped backend; on a backend fault fail over and run it simulated."""
        with self._lock:
            if self._simulated is None:
                try:
                    return fn(self._inner)
                except FAULTS as e:
                    self._fail_over(what, e)
            assert self._simulated is not None
            return fn(self._simulated)

    def _fail_over(self, what: str, error: Exception) -> None:
        simulated = SimulatedBackend(self._frequencies_mhz, sleep_fn=self._sleep)
        if self._requested_mhz is not None:
            simulated.set_frequency_mhz(self._requested_mhz)
        self._fault = f'{what}: {error}'
        self._fault_monotonic = time.monotonic()
        self._simulated = simulated
        LOG.error('DVFS backend %s failed (%s: %s); running on the simulated backend from now on '
                  '(%.1f MHz, latency emulated, energy modelled)', self._inner.name, what,
                  error, simulated.current_frequency_mhz())
