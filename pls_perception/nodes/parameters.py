"""Parameter descriptors for the package's nodes (one way to say a parameter's range)."""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor


def descriptor(description: str, *, float_range: tuple[float, float] | None = None,
               int_range: tuple[int, int] | None = None, read_only: bool = False,
               constraints: str = '') -> ParameterDescriptor:
    """A ParameterDescriptor with ``description``, an optional range and constraints text."""
    result = ParameterDescriptor(description=description, read_only=read_only,
                                 additional_constraints=constraints)
    if float_range is not None:
        result.floating_point_range = [
            FloatingPointRange(from_value=float_range[0], to_value=float_range[1], step=0.0)]
    if int_range is not None:
        result.integer_range = [
            IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    return result
