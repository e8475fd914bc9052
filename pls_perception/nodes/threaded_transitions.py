"""Lifecycle transitions off the executor thread, so a slow configure never silences a node.

rclpy runs a transition inside the ``change_state`` service callback. A configure that loads a
network and builds inference graphs takes seconds to minutes; on the node's executor thread it
would leave ``get_state``, the parameter services and every timer unanswered for that long. Here
``change_state`` becomes a coroutine that runs the transition on a worker thread and awaits it:
the executor keeps serving everything else, the caller still gets its answer when the transition
ends, and ``get_state`` reports the transition state (``configuring``) meanwhile. One transition
runs at a time; a second request while one runs is refused (``success=False``) with a log line.

rclpy 7 (Jazzy) also raises RCLError out of ``change_state`` when the requested transition does
not exist in the current state, which would end ``spin()`` and the process (one mistyped
``ros2 lifecycle set``): such a request is answered ``success=False`` too.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import Executor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.task import Future

T = TypeVar('T')


async def run_in_thread(executor: Executor | None, fn: Callable[..., T], *args: Any,
                        name: str = 'pls_transition') -> T:
    """Await ``fn(*args)`` run on a new thread, without blocking ``executor``."""
    future: Future = Future(executor=executor)
    # A done callback makes set_result wake the executor, which then resumes the awaiting task.
    future.add_done_callback(lambda _: None)

    def work() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - re-raised in the awaiting coroutine
            future.set_exception(e)
    threading.Thread(target=work, name=name, daemon=True).start()
    return await future


class ThreadedTransitions:
    """Runs ``node``'s transitions on worker threads; see the module docstring."""

    def __init__(self, node: LifecycleNode) -> None:
        self._node = node
        self._lock = threading.Lock()   # held for a whole transition
        service = getattr(node, '_service_change_state', None)
        if service is None:             # enable_communication_interface=False
            return
        change_state = service.callback

        def guarded(request: Any, response: Any) -> Any:
            try:
                return change_state(request, response)
            except _rclpy.RCLError:
                node.get_logger().warning(
                    f'change_state: transition {request.transition.id} '
                    f'{request.transition.label!r} is not available from '
                    f'{node._state_machine.current_state[1]}')
                response.success = False
                return response

        async def threaded_change_state(request: Any, response: Any) -> Any:
            if not self._lock.acquire(blocking=False):
                node.get_logger().warning(
                    f'change_state: transition {request.transition.id} '
                    f'{request.transition.label!r} refused: another transition is running '
                    f'({node._state_machine.current_state[1]}); ask again when it is done')
                response.success = False
                return response
            try:
                return await run_in_thread(node.executor, guarded, request, response)
            finally:
                self._lock.release()
        # Its own reentrant group: the suspended coroutine must not hold the default group,
        # which the parameter services, timers and the other lifecycle services share.
        group = ReentrantCallbackGroup()
        group.add_entity(service)
        service.callback_group = group
        service.callback = threaded_change_state

    @property
    def busy(self) -> bool:
        """True while a transition runs."""
        return self._lock.locked()

    def start(self, *transitions: Callable[[], TransitionCallbackReturn]) -> None:
        """Run ``transitions`` in order on a worker thread, stopping at the first that fails.

        For autostart: ``start(node.trigger_configure, node.trigger_activate)`` before spinning.
        """
        def run() -> None:
            with self._lock:
                for transition in transitions:
                    if transition() != TransitionCallbackReturn.SUCCESS:
                        return
        threading.Thread(target=run, name='pls_autostart', daemon=True).start()

    def join(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a running transition; True when none runs."""
        if self._lock.acquire(timeout=timeout_s):
            self._lock.release()
            return True
        return False
