"""colcon build/test on this package: the installed tree has what ros2 run/launch need.

Builds into a temp dir (never into the repo) with the colcon from the test environment
(colcon-common-extensions, pinned in requirements-test.txt) and checks the ament index marker,
package.xml, launch and config files under share/, the executables under lib/pls_perception,
that the installed copy is the one imported after sourcing ``setup.bash``, and that
``colcon test`` runs pytest in the package and reports failures.
"""
from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pls_perception.paths import PACKAGE_NAME, REPO_ROOT

COLCON = Path(sys.executable).parent / 'colcon'
pytestmark = pytest.mark.skipif(not COLCON.is_file(),
                                reason='colcon not installed (pip install -r '
                                       'requirements-test.txt)')


def _console_scripts() -> list[str]:
    text = (REPO_ROOT / 'setup.py').read_text()
    return re.findall(r"'([\w-]+) = pls_perception\.[\w.]+:main'", text)


def _colcon(tmp: Path, verb: str, *args: str,
            timeout_s: float = 240.0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH',)}
    env['PATH'] = f'{COLCON.parent}{os.pathsep}{env.get("PATH", "")}'
    return subprocess.run(
        [str(COLCON), '--log-base', str(tmp / 'log'), verb, '--base-paths', str(REPO_ROOT),
         '--build-base', str(tmp / 'build'), '--install-base', str(tmp / 'install'), *args],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope='module', params=['copy', 'symlink'])
def install(request, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp(f'colcon_{request.param}')
    extra = ['--symlink-install'] if request.param == 'symlink' else []
    result = _colcon(tmp, 'build', *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp / 'install'


def test_discovery_finds_only_this_package(tmp_path: Path) -> None:
    # .venv/ (hidden) and test data below the package root must not be crawled
    result = subprocess.run([str(COLCON), 'list', '--base-paths', str(REPO_ROOT)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [PACKAGE_NAME, str(REPO_ROOT), '(ros.ament_python)']


def test_installed_tree(install: Path) -> None:
    prefix = install / PACKAGE_NAME
    share = prefix / 'share' / PACKAGE_NAME
    assert (prefix / 'share/ament_index/resource_index/packages' / PACKAGE_NAME).is_file()
    assert (share / 'package.xml').read_text() == (REPO_ROOT / 'package.xml').read_text()
    for pattern in ('launch/*.launch.py', 'config/*.yaml', 'config/profiles/*.yaml'):
        source = sorted(p.relative_to(REPO_ROOT) for p in REPO_ROOT.glob(pattern))
        assert source, f'the repo has no {pattern}'
        assert sorted(p.relative_to(share) for p in share.glob(pattern)) == source
    scripts = _console_scripts()
    for required in ('perception_node', 'dvfs_manager', 'image_source', 'budget_schedule',
                     'pls-bag', 'pls-demo'):
        assert required in scripts
    for name in scripts:
        exe = prefix / 'lib' / PACKAGE_NAME / name
        assert exe.is_file() and os.access(exe, os.X_OK), exe
    # setup.cfg puts scripts where ros2 run looks (lib/<package>), not in bin/
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / 'setup.cfg')
    assert cfg['install']['install_scripts'] == f'$base/lib/{PACKAGE_NAME}'
    assert not (prefix / 'bin').exists()


def test_sourced_install_is_what_runs(install: Path, tmp_path: Path) -> None:
    probe = ('from ament_index_python.packages import get_package_share_directory as s; '
             'import pls_perception, pls_perception.paths as p; '
             f'print(s("{PACKAGE_NAME}")); print(p.config_dir()); print(pls_perception.__file__)')
    script = (f'. "{install}/setup.bash" && "{sys.executable}" -c \'{probe}\' && '
              f'"{install}/{PACKAGE_NAME}/lib/{PACKAGE_NAME}/pls-bag" --help')
    env = {k: v for k, v in os.environ.items() if k not in ('AMENT_PREFIX_PATH', 'PYTHONPATH')}
    result = subprocess.run(['bash', '-c', script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    share, config, module = result.stdout.splitlines()[:3]
    assert Path(share) == install / PACKAGE_NAME / 'share' / PACKAGE_NAME
    assert Path(config).resolve() in {(Path(share) / 'config').resolve(),
                                      (REPO_ROOT / 'config').resolve()}
    assert 'usage: pls-bag' in result.stdout
    if not (install / PACKAGE_NAME / 'lib' / f'python{sys.version_info.major}.'
            f'{sys.version_info.minor}' / 'site-packages' / 'pls-perception.egg-link').exists():
        assert Path(module).is_relative_to(install)  # a copy install imports the copy


def test_colcon_test_runs_pytest_and_reports_failures(install: Path, tmp_path: Path) -> None:
    base = install.parent
    passing = _colcon(base, 'test', '--return-code-on-test-failure', '--pytest-args',
                      'test/test_bags.py::test_publish_offsets')
    assert passing.returncode == 0, passing.stdout + passing.stderr
    xml = (base / 'build' / PACKAGE_NAME / 'pytest.xml').read_text()
    assert 'test_publish_offsets' in xml and 'failures="0"' in xml
    probe = tmp_path / 'test_failing_probe.py'
    probe.write_text('def test_fails() -> None:\n    assert 1 == 2\n')
    failing = _colcon(base, 'test', '--return-code-on-test-failure', '--pytest-args',
                      str(probe))
    assert failing.returncode != 0
    assert 'had test failures' in failing.stdout + failing.stderr
