"""NewestFrameSlot: the one-frame mailbox between the image callback and the inference thread."""
from __future__ import annotations

import threading
import time

import pytest

from pls_perception.pipeline.frame_slot import NewestFrameSlot

pytestmark = pytest.mark.timeout(60)
JOIN_S = 10.0


def _started(target: object) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def test_put_replaces_an_untaken_item_and_pop_takes_it() -> None:
    slot: NewestFrameSlot[int] = NewestFrameSlot()
    assert slot.pending() == 0 and slot.pop() is None
    assert slot.put(1) is False                   # nothing was waiting
    assert slot.pending() == 1
    assert slot.put(2) is True                    # 1 was never taken: dropped
    assert slot.pending() == 1
    assert slot.wait(0.0) is True
    assert slot.pop() == 2
    assert slot.pending() == 0 and slot.pop() is None
    assert slot.put(3) is False                   # 2 was taken: nothing replaced
    assert slot.pop() == 3


def test_wait_returns_at_once_while_an_item_waits() -> None:
    slot: NewestFrameSlot[str] = NewestFrameSlot()
    slot.put('frame')
    t0 = time.monotonic()
    assert slot.wait(30.0) is True
    assert time.monotonic() - t0 < 5.0
    assert slot.wait(30.0) is True                # not consumed by wait: pop takes it
    assert slot.pop() == 'frame'


def test_wait_timeout_returns_true_without_an_item() -> None:
    slot: NewestFrameSlot[int] = NewestFrameSlot()
    t0 = time.monotonic()
    assert slot.wait(0.2) is True                 # periodic work, not a stop
    assert time.monotonic() - t0 >= 0.18          # (timer granularity)
    assert slot.pop() is None


def test_nudge_wakes_a_blocked_waiter_without_an_item() -> None:
    slot: NewestFrameSlot[int] = NewestFrameSlot()
    woke: list[tuple[bool, int | None]] = []
    waiting = _started(lambda: woke.append((slot.wait(), slot.pop())))  # no timeout
    time.sleep(0.1)
    assert woke == [] and waiting.is_alive()
    slot.nudge()
    waiting.join(JOIN_S)
    assert not waiting.is_alive() and woke == [(True, None)]
    # The nudge was used up: the next wait blocks again until its timeout.
    t0 = time.monotonic()
    assert slot.wait(0.2) is True
    assert time.monotonic() - t0 >= 0.18          # (timer granularity)


def test_nudge_before_wait_is_not_lost() -> None:
    slot: NewestFrameSlot[int] = NewestFrameSlot()
    slot.nudge()                                  # e.g. a parameter set while a frame ran
    t0 = time.monotonic()
    assert slot.wait(30.0) is True
    assert time.monotonic() - t0 < 5.0


def test_close_during_a_frame_returns_the_untaken_item_and_stops_the_consumer() -> None:
    """Deactivate while a frame is in flight: close hands back the frame that arrived meanwhile
    (the node counts it as dropped) and the consumer's next wait says stop."""
    slot: NewestFrameSlot[int] = NewestFrameSlot()
    in_flight, finish = threading.Event(), threading.Event()
    seen: list[object] = []

    def consume() -> None:
        while slot.wait():
            seen.append(slot.pop())
            in_flight.set()
            finish.wait(JOIN_S)                   # the slow frame
        seen.append('stopped')

    consumer = _started(consume)
    slot.put(1)
    assert in_flight.wait(JOIN_S)
    assert slot.put(2) is False                   # 1 was taken: nothing replaced
    assert slot.close() == 2
    finish.set()
    consumer.join(JOIN_S)
    assert not consumer.is_alive() and seen == [1, 'stopped']
    assert slot.pop() is None and slot.pending() == 0


def test_close_returns_the_untaken_item_and_wait_then_returns_false() -> None:
    slot: NewestFrameSlot[int] = NewestFrameSlot()
    slot.put(1)
    assert slot.close() == 1
    assert slot.pending() == 0 and slot.pop() is None
    assert slot.wait() is False                   # no timeout needed: closed returns at once
    assert slot.wait(0.0) is False
    assert slot.close() is None
    empty: NewestFrameSlot[int] = NewestFrameSlot()
    assert empty.close() is None and empty.wait(30.0) is False


def test_close_wakes_a_waiter_blocked_without_timeout() -> None:
    slot: NewestFrameSlot[int] = NewestFrameSlot()
    woke: list[bool] = []
    waiting = _started(lambda: woke.append(slot.wait()))
    time.sleep(0.1)
    assert woke == [] and waiting.is_alive()
    assert slot.close() is None
    waiting.join(JOIN_S)
    assert not waiting.is_alive() and woke == [False]


def test_producer_consumer_newest_wins_and_nothing_is_lost() -> None:
    """A fast producer and a slower consumer in two threads: whenever the consumer takes an item
    it is the newest one put (checked under a lock the producer holds around put and its own
    record), and taken + replaced + left == put."""
    slot: NewestFrameSlot[int] = NewestFrameSlot()
    total = 20_000
    order = threading.Lock()      # makes "newest put so far" well defined at each pop
    newest = [0]
    replaced = [0]
    taken: list[int] = []
    stale: list[tuple[int, int]] = []

    def consume() -> None:
        while slot.wait(1.0):
            with order:
                item, expected = slot.pop(), newest[0]
            if item is None:                 # timeout, or an item replaced after a notify
                continue
            if item != expected:
                stale.append((item, expected))
            taken.append(item)
            if len(taken) % 20 == 0:
                time.sleep(0.001)            # a slow frame now and then: the producer overwrites

    consumer = _started(consume)
    for i in range(1, total + 1):
        with order:
            replaced[0] += slot.put(i)
            newest[0] = i
        if i % 500 == 0:
            time.sleep(0.001)                # let the consumer in now and then
    left = slot.close()
    consumer.join(JOIN_S)
    assert not consumer.is_alive()
    assert stale == [], stale[:5]
    assert taken == sorted(set(taken)), 'an item was taken twice or out of order'
    assert len(taken) > 1 and replaced[0] > 0, (len(taken), replaced[0])  # both paths ran
    assert len(taken) + replaced[0] + (left is not None) == total
    assert (left if left is not None else taken[-1]) == total   # the newest is never dropped
