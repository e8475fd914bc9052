"""The shared-data search of pls_perception.paths, on fake checkouts, prefixes and user dirs.

No ROS needed: the installed share comes from a real (tiny) ament index under tmp_path.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pls_perception import paths
from pls_perception.errors import PlsError, WeightsError

WEIGHTS = paths.REFERENCE_WEIGHTS


def _put(root: Path, relative: Path = WEIGHTS) -> Path:
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).write_bytes(b'weights')
    return root / relative


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A source checkout (repo/ with shared/ beside it), an install prefix, a user data home;
    all empty, no $PLS_SHARED_DIR."""
    repo = tmp_path / 'repo'
    (repo / 'config').mkdir(parents=True)
    (repo / 'package.xml').write_text('<package/>')
    prefix = tmp_path / 'install'
    marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'pls_perception'
    marker.parent.mkdir(parents=True)
    marker.write_text('')
    (prefix / 'share' / 'pls_perception').mkdir()
    monkeypatch.setattr(paths, 'REPO_ROOT', repo)
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(prefix))
    monkeypatch.setenv('XDG_DATA_HOME', str(tmp_path / 'xdg'))
    monkeypatch.delenv('PLS_SHARED_DIR', raising=False)
    return {'checkout': tmp_path / 'shared', 'installed': prefix / 'share' / 'pls_perception',
            'user': tmp_path / 'xdg' / 'pls_perception', 'repo': repo, 'tmp': tmp_path}


def test_search_order_without_the_env_var(layout: dict[str, Path]) -> None:
    assert paths.data_search_path() == [
        (layout['checkout'], 'source checkout'), (layout['installed'], 'installed share'),
        (layout['user'], 'user data dir')]
    user = _put(layout['user'])
    assert paths.find_reference_weights() == user == paths.reference_weights()
    installed = _put(layout['installed'])
    assert paths.find_reference_weights() == installed
    checkout = _put(layout['checkout'])
    assert paths.find_reference_weights() == checkout


def test_an_installed_package_does_not_look_beside_its_site_packages(
        layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    site = layout['tmp'] / 'lib' / 'python3.11' / 'site-packages'
    site.mkdir(parents=True)
    monkeypatch.setattr(paths, 'REPO_ROOT', site)
    _put(site.parent / 'shared')
    assert [why for _, why in paths.data_search_path()] == ['installed share', 'user data dir']
    installed = _put(layout['installed'])
    assert paths.find_reference_weights() == installed


def test_the_env_var_is_the_only_place_searched(layout: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _put(layout['checkout'])
    chosen = layout['tmp'] / 'chosen'
    monkeypatch.setenv('PLS_SHARED_DIR', str(chosen))
    assert paths.data_search_path() == [(chosen, '$PLS_SHARED_DIR')]
    assert not paths.reference_weights().is_file()
    with pytest.raises(WeightsError) as info:
        paths.find_reference_weights()
    message = str(info.value)
    assert message == (f'reference weights not found: looked for {WEIGHTS} in {chosen} '
                       f'($PLS_SHARED_DIR); point PLS_SHARED_DIR at a dir with {WEIGHTS} (or '
                       'unset it to search the defaults), or give its path explicitly')
    chosen_weights = _put(chosen)
    assert paths.find_reference_weights() == chosen_weights


def test_nothing_found_is_one_line_naming_every_place(layout: dict[str, Path]) -> None:
    with pytest.raises(paths.DataNotFoundError) as info:
        paths.find_cifar10_tar()
    error = info.value
    assert isinstance(error, FileNotFoundError) and isinstance(error, PlsError)
    assert not isinstance(error, WeightsError)
    message = str(error)
    assert '\n' not in message
    assert message.startswith(f'CIFAR-10 tarball not found: looked for {paths.CIFAR10_TAR} in '
                              f'{layout["checkout"]} (source checkout), {layout["installed"]} '
                              f'(installed share), {layout["user"]} (user data dir); ')
    assert f'export PLS_SHARED_DIR=<dir with {paths.CIFAR10_TAR}>' in message
    assert not paths.cifar10_tar().is_file()
    assert paths.cifar10_tar() == layout['checkout'] / paths.CIFAR10_TAR


def test_user_data_dir_defaults_to_local_share(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.delenv('XDG_DATA_HOME', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    assert paths.user_data_dir() == tmp_path / '.local' / 'share' / 'pls_perception'
