"""The shared ``main()`` of the nodes: start, spin, shut down cleanly, end the process."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

# How often a spinning main() looks at the stop event (the latency of Ctrl-C).
STOP_POLL_S = 0.1


@contextlib.contextmanager
def stop_requested() -> Iterator[threading.Event]:
    """An event set by SIGINT (Ctrl-C, ``ros2 launch`` shutting down) or SIGTERM in the block.

    Use with ``rclpy.init(signal_handler_options=SignalHandlerOptions.NO)`` and spin until the
    event is set. rclpy's own handler shuts the context down from the signal, under threads that
    may still be publishing, and raises KeyboardInterrupt at whatever bytecode runs; inside a
    message conversion pybind11 turns that into a RuntimeError (a traceback and exit code 1).
    """
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def make_executor() -> Executor:
    """The executor our nodes spin on: one thread, since every callback is short.

    (Inference runs in the perception node's own thread.) rclpy's experimental
    ``EventsExecutor`` would dispatch messages more cheaply, but in the Jazzy wheels (rclpy
    7.1.6) it answers no service request and ignores Ctrl-C, so it is not used.
    """
    return SingleThreadedExecutor()


def exit_process(code: int) -> NoReturn:
    """End a node's process with ``code`` once ROS is shut down, skipping interpreter exit.

    With rclpy and Fast DDS loaded (and torch and ONNX Runtime in the perception node),
    interpreter finalization ran into native static destructors that hung (the manager, after a
    clean shut-down under ``ros2 launch``, until SIGTERM) or crashed (SIGSEGV, seen in CI), which
    turned a clean stop into a failure. By then the node is destroyed and the context shut down.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def spin_node(make_node: Callable[[], Node], node_name: str, args: list[str] | None = None,
              startup_errors: tuple[type[BaseException], ...] = (ValueError,),
              hint: str = '', started: Callable[[Any], None] | None = None,
              stopping: Callable[[Any], None] | None = None) -> NoReturn:
    """Build the node, spin it until SIGINT/SIGTERM or external shutdown, then end the process
    (`exit_process`) with exit code 0, or 1 if the node cannot start.

    ``startup_errors`` raised by ``make_node`` (a bad parameter, a missing profile) are logged as
    one fatal line, followed by ``hint`` saying what to do, instead of a traceback.
    ``started(node)`` runs once the node is on the executor, ``stopping(node)`` after the stop,
    before the node is destroyed (a lifecycle node's autostart and teardown).
    """
    exit_process(_spin(make_node, node_name, args, startup_errors, hint, started, stopping))


def _spin(make_node: Callable[[], Node], node_name: str, args: list[str] | None,
          startup_errors: tuple[type[BaseException], ...], hint: str,
          started: Callable[[Any], None] | None, stopping: Callable[[Any], None] | None) -> int:
    with stop_requested() as stop:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
        node: Node | None = None
        try:
            try:
                node = make_node()
            except startup_errors as e:
                rclpy.logging.get_logger(node_name).fatal(f'cannot start: {e}{hint}')
                return 1
            executor = make_executor()
            executor.add_node(node)
            if started is not None:
                started(node)
            while not stop.is_set():
                executor.spin_once(timeout_sec=STOP_POLL_S)
        except ExternalShutdownException:
            pass
        finally:
            if node is not None:
                if stopping is not None:
                    stopping(node)
                node.destroy_node()
            rclpy.try_shutdown()
    return 0
