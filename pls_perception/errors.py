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


class DatasetError(PlsError):
    """A dataset or calibration set (tarball, image folder) is missing or malformed."""


# Untrusted strings (an encoding, a format, a value read from a file) in an error message are
# cut to this many characters, so a hostile or broken input cannot flood the log.
CLIP_CHARS = 80


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how many were left out.

    For untrusted text in error messages; pass ``repr(value)`` when the value may hold line
    breaks, so the message stays one line.
    """
    if len(text) <= limit:
        return text
    return f'{text[:limit]}... ({len(text) - limit} more characters)'


def shown(value: object) -> str:
    """A value from a file as an error message shows it: its repr, clipped."""
    return clip(repr(value))
