"""The package's exception hierarchy: one base so callers can catch everything we raise."""
from __future__ import annotations


class PlsError(Exception):
    """Base class of every error pls_perception raises on purpose."""


class WeightsError(PlsError):
    """A weights file is missing, truncated, or does not match the architecture."""


class ProfileError(PlsError):
    """An operating-point profile (or skip plan) file is malformed or inconsistent."""


class ImageFormatError(PlsError):
    """An image message cannot be converted (bad encoding, size, or data length)."""


class BagError(PlsError):
    """A rosbag2 is corrupt, truncated, or lacks the requested topic or type."""


class BackendError(PlsError):
    """A DVFS or energy backend failed."""


class PermissionDenied(BackendError):
    """The backend exists but we may not write to it (e.g. sysfs without root)."""


class NotSupported(BackendError):
    """The backend does not exist on this machine."""
