"""The thread that builds inference graphs in the background, and how a process stops with one.

A graph export runs for seconds inside torch and ONNX Runtime C++ code. The worker is a daemon
thread so that stopping a node never waits for an export; but a normal interpreter exit while
such a thread is inside C++ aborts in static destructors (``terminate called without an active
exception``). `join_all` tells the caller whether any export is still running, so a node's
``main()`` can end the process with ``os._exit`` after its ROS clean-up instead.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

_WORKERS: weakref.WeakSet[BuildWorker] = weakref.WeakSet()


class BuildWorker:
    """One daemon thread running build jobs in order: asked-for ratios first, then background.

    A daemon, and never joined for long, so stopping the process does not wait for an export.
    """

    def __init__(self) -> None:
        self._urgent: deque[Callable[[], None]] = deque()
        self._background: deque[Callable[[], None]] = deque()
        self._wake = threading.Condition()
        self._stopped = False
        self._idle = True
        self._thread = threading.Thread(target=self._run, daemon=True, name='onnx-build')
        self._thread.start()
        _WORKERS.add(self)

    def submit(self, job: Callable[[], None], urgent: bool = True) -> None:
        with self._wake:
            if self._stopped:
                return
            (self._urgent if urgent else self._background).append(job)
            self._wake.notify_all()

    def stop(self) -> None:
        """Drop the queued jobs; a job already running finishes on its own."""
        with self._wake:
            self._stopped = True
            self._urgent.clear()
            self._background.clear()
            self._wake.notify_all()

    def wait_idle(self, timeout_s: float | None) -> bool:
        """Block until every queued job ran (True) or ``timeout_s`` passed (False)."""
        with self._wake:
            return self._wake.wait_for(
                lambda: self._stopped or (self._idle and not self._urgent
                                          and not self._background),
                timeout_s)

    def join(self, timeout_s: float) -> bool:
        """After `stop`: wait up to ``timeout_s`` for the job in flight; True when none runs."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._wake:
                self._idle = True
                self._wake.notify_all()
                self._wake.wait_for(lambda: self._stopped or self._urgent or self._background)
                if self._stopped:
                    return
                queue = self._urgent if self._urgent else self._background
                job = queue.popleft()
                self._idle = False
            job()


def join_all(timeout_s: float) -> bool:
    """Stop every worker and wait up to ``timeout_s`` in all; True when no job is running."""
    workers = list(_WORKERS)
    for worker in workers:
        worker.stop()
    deadline = time.monotonic() + timeout_s
    return all(w.join(max(0.0, deadline - time.monotonic())) for w in workers)
