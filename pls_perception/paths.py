"""Where things live: the package share dir (config, launch) and the sibling ``shared/`` data.

The share dir comes from the ament index when the package is installed by colcon (or pip with
AMENT_PREFIX_PATH set); a source checkout falls back to the repo root so tools work uninstalled.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_NAME = 'pls_perception'
REPO_ROOT = Path(__file__).resolve().parents[1]


def share_dir() -> Path:
    """Directory holding ``config/`` and ``launch/`` for this package."""
    if (REPO_ROOT / 'config').is_dir() and (REPO_ROOT / 'package.xml').is_file():
        return REPO_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE_NAME))
    except Exception as e:  # noqa: BLE001 - any failure means "not installed via ament"
        raise FileNotFoundError(
            f'cannot find the {PACKAGE_NAME} share directory: not a source checkout and the '
            f'ament index lookup failed ({e}); set AMENT_PREFIX_PATH to the install prefix') from e


def config_dir() -> Path:
    """The package's ``config/`` directory."""
    return share_dir() / 'config'


def shared_dir() -> Path:
    """The project's ``shared/`` data folder: $PLS_SHARED_DIR, else ``../shared`` of the repo."""
    env = os.environ.get('PLS_SHARED_DIR')
    return Path(env) if env else REPO_ROOT.parent / 'shared'


def cifar10_tar() -> Path:
    """The shared CIFAR-10 JPEG tarball (may not exist on a user's machine)."""
    return shared_dir() / 'data' / 'cifar10' / 'cifar10-jpg.tar.gz'


def reference_weights() -> Path:
    """The shared reference ResNet-152 CIFAR-10 weights (may not exist)."""
    return shared_dir() / 'models' / 'resnet152_cifar10_ref.pt'
