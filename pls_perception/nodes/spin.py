"""The shared ``main()`` of the plain (non-lifecycle) nodes: start, spin, shut down cleanly."""
from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node


def make_executor() -> Executor:
    """The executor our nodes spin on: one thread, since every callback is short.

    (Inference runs in the perception node's own thread.) rclpy's experimental
    ``EventsExecutor`` would dispatch messages more cheaply, but in the Jazzy wheels (rclpy
    7.1.6) it answers no service request and ignores Ctrl-C, so it is not used.
    """
    return SingleThreadedExecutor()


def spin_node(make_node: Callable[[], Node], node_name: str, args: list[str] | None = None,
              startup_errors: tuple[type[BaseException], ...] = (ValueError,),
              hint: str = '') -> int:
    """Build the node, spin it until Ctrl-C or external shutdown; exit code 1 if it cannot start.

    ``startup_errors`` raised by ``make_node`` (a bad parameter, a missing profile) are logged as
    one fatal line, followed by ``hint`` saying what to do, instead of a traceback.
    """
    rclpy.init(args=args)
    node: Node | None = None
    try:
        try:
            node = make_node()
        except startup_errors as e:
            rclpy.logging.get_logger(node_name).fatal(f'cannot start: {e}{hint}')
            return 1
        executor = make_executor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C (also while starting) or ros2 launch's SIGINT: a normal stop, exit 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
