"""A one-frame mailbox between a camera callback and an inference thread: the newest frame wins.

A camera faster than the network is the normal case on a small computer. Queueing frames would
only make every result staler, so the producer overwrites the frame not yet taken (and counts it
as dropped) and the consumer always gets the freshest one. The consumer can also be nudged
without a frame (a new operating point to apply while no frames flow).
"""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar('T')


class NewestFrameSlot(Generic[T]):
    """Holds at most one item; ``put`` replaces, ``wait`` + ``pop`` consume. Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._nudged = False
        self._closed = False

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced an item nobody took (that one is dropped)."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def nudge(self) -> None:
        """Wake the consumer even without a new item."""
        with self._cond:
            self._nudged = True
            self._cond.notify()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until an item or a nudge is there; False once closed (the consumer stops).

        Returns True on timeout too, so a consumer can do periodic work.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._nudged or self._item is not None,
                                timeout_s)
            self._nudged = False
            return not self._closed

    def pop(self) -> T | None:
        """Take the item (None if there is none)."""
        with self._cond:
            item, self._item = self._item, None
            return item

    def pending(self) -> int:
        """1 if an item waits to be taken, else 0."""
        with self._cond:
            return int(self._item is not None)

    def close(self) -> T | None:
        """Stop the consumer; returns the item that was never taken (None if none)."""
        with self._cond:
            self._closed = True
            item, self._item = self._item, None
            self._cond.notify_all()
            return item
