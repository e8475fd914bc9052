"""Where things live: the package share dir (config, launch) and the shared data it needs.

The share dir comes from the ament index when the package is installed by colcon (or pip with
AMENT_PREFIX_PATH set); a source checkout falls back to the repo root so tools work uninstalled.

Shared data (the reference weights ``models/resnet152_cifar10_ref.pt`` and the CIFAR-10 tarball
``data/cifar10/cifar10-jpg.tar.gz``) is looked for, first hit wins, in:

1. ``$PLS_SHARED_DIR`` when it is set, and then nowhere else (an explicit choice, like a path
   parameter; tests point it at an empty dir to hide the data);
2. otherwise ``../shared`` next to the source checkout (editable and ``--symlink-install``
   installs), the installed ``share/pls_perception`` (from the ament index), then the user data
   dir ``$XDG_DATA_HOME/pls_perception`` (default ``~/.local/share/pls_perception``).

Each holds the same layout (``models/...``, ``data/cifar10/...``). An explicit path (a node
parameter, a command-line option) always wins over the search; when the search finds nothing
``find_*`` raises a one-line error that lists where it looked and how to fix it.
"""
from __future__ import annotations

import os
from pathlib import Path

from pls_perception.errors import PlsError, WeightsError

PACKAGE_NAME = 'pls_perception'
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR_ENV = 'PLS_SHARED_DIR'
REFERENCE_WEIGHTS = Path('models') / 'resnet152_cifar10_ref.pt'
CIFAR10_TAR = Path('data') / 'cifar10' / 'cifar10-jpg.tar.gz'
# The search in one phrase, for launch-argument and CLI help.
DATA_SEARCH_HELP = (f'in ${SHARED_DIR_ENV} if set, else searched in ../shared next to a source '
                    f'checkout, the installed share/{PACKAGE_NAME}, ~/.local/share/{PACKAGE_NAME}')
WEIGHTS_ARG_HELP = (f"state_dict path | imagenet | random; '' = the reference weights "
                    f'{DATA_SEARCH_HELP} (configure fails naming them if absent)')


class DataNotFoundError(PlsError, FileNotFoundError):
    """A shared data file is in none of the searched directories."""


class WeightsNotFoundError(DataNotFoundError, WeightsError):
    """No weights were given and the reference weights are in none of the searched places."""


def _is_source_checkout() -> bool:
    return (REPO_ROOT / 'config').is_dir() and (REPO_ROOT / 'package.xml').is_file()


def _installed_share_dir() -> Path | None:
    """``share/pls_perception`` from the ament index, or None when the package is not indexed."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE_NAME))
    except Exception:  # noqa: BLE001 - not importable, not on AMENT_PREFIX_PATH: not installed
        return None


def share_dir() -> Path:
    """Directory holding ``config/`` and ``launch/`` for this package."""
    if _is_source_checkout():
        return REPO_ROOT
    installed = _installed_share_dir()
    if installed is None:
        raise FileNotFoundError(
            f'cannot find the {PACKAGE_NAME} share directory: not a source checkout and not in '
            f'the ament index; set AMENT_PREFIX_PATH to the install prefix')
    return installed


def config_dir() -> Path:
    """The package's ``config/`` directory."""
    return share_dir() / 'config'


def user_data_dir() -> Path:
    """Per-user data dir (XDG): ``$XDG_DATA_HOME/pls_perception``, else ``~/.local/share/...``."""
    base = os.environ.get('XDG_DATA_HOME') or Path.home() / '.local' / 'share'
    return Path(base) / PACKAGE_NAME


def data_search_path() -> list[tuple[Path, str]]:
    """The directories searched for shared data, in order, each with why it is searched."""
    env = os.environ.get(SHARED_DIR_ENV)
    if env:
        return [(Path(env), f'${SHARED_DIR_ENV}')]
    found: list[tuple[Path, str]] = []
    if _is_source_checkout():
        found.append((REPO_ROOT.parent / 'shared', 'source checkout'))
    installed = _installed_share_dir()
    if installed is not None:
        found.append((installed, 'installed share'))
    found.append((user_data_dir(), 'user data dir'))
    return found


def _first_hit(relative: Path, searched: list[tuple[Path, str]]) -> Path | None:
    return next((d / relative for d, _ in searched if (d / relative).is_file()), None)


def find_data(relative: Path, what: str,
              error: type[DataNotFoundError] = DataNotFoundError) -> Path:
    """The first ``<dir>/relative`` of ``data_search_path()`` that exists; else ``error``."""
    searched = data_search_path()
    hit = _first_hit(relative, searched)
    if hit is not None:
        return hit
    looked = ', '.join(f'{d} ({why})' for d, why in searched)
    where = (f'point {SHARED_DIR_ENV} at a dir with {relative} (or unset it to search the '
             'defaults)' if os.environ.get(SHARED_DIR_ENV) else
             f'export {SHARED_DIR_ENV}=<dir with {relative}>, put it under {user_data_dir()}')
    raise error(f'{what} not found: looked for {relative} in {looked}; {where}, or give its '
                'path explicitly')


def find_reference_weights() -> Path:
    """The reference ResNet-152 CIFAR-10 weights; ``WeightsNotFoundError`` if not found."""
    return find_data(REFERENCE_WEIGHTS, 'reference weights', WeightsNotFoundError)


def find_cifar10_tar() -> Path:
    """The CIFAR-10 JPEG tarball; ``DataNotFoundError`` if not found."""
    return find_data(CIFAR10_TAR, 'CIFAR-10 tarball')


def _found_or_first(relative: Path) -> Path:
    searched = data_search_path()
    return _first_hit(relative, searched) or searched[0][0] / relative


def shared_dir() -> Path:
    """The first directory of the data search path (where data is looked for first)."""
    return data_search_path()[0][0]


def cifar10_tar() -> Path:
    """The CIFAR-10 tarball found by the search, else where it is looked for first (may not
    exist: use ``find_cifar10_tar`` to fail with the places searched)."""
    return _found_or_first(CIFAR10_TAR)


def reference_weights() -> Path:
    """The reference weights found by the search, else where they are looked for first (may not
    exist: use ``find_reference_weights`` to fail with the places searched)."""
    return _found_or_first(REFERENCE_WEIGHTS)
