"""colcon build/test on this package: the installed tree has what ros2 run/launch need.

Builds a copy install and a ``--symlink-install`` into temp dirs (never into the repo) with the
colcon from the test environment (colcon-common-extensions, pinned in requirements-test.txt) and
checks: the ament index marker, package.xml, every file git tracks under launch/ and config/
(compared with the source tree, not with setup.py's globs), the executables under
lib/pls_perception, that the installed copy is the one imported after sourcing ``setup.bash``,
that ``colcon test`` runs pytest in the package and reports failures, that ``ros2 launch`` of
perception.launch.py from each install classifies with the reference weights, and that a copy
install without the shared data fails configure with one line saying where it looked.
"""
from __future__ import annotations

import configparser
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import launch_support
from launch_support import CONFIGURE_TIMEOUT_S, LAUNCH_TOOLS_MISSING, RosLaunch, colcon

from pls_perception import paths
from pls_perception.paths import PACKAGE_NAME, REPO_ROOT

COLCON = Path(sys.executable).parent / 'colcon'
pytestmark = pytest.mark.skipif(not COLCON.is_file(),
                                reason='colcon not installed (pip install -r '
                                       'requirements-test.txt)')
needs_ros2 = pytest.mark.skipif(launch_support.ros2_executable() is None,
                                reason=LAUNCH_TOOLS_MISSING)
needs_data = launch_support.needs_data


def _console_scripts() -> list[str]:
    text = (REPO_ROOT / 'setup.py').read_text()
    return re.findall(r"'([\w-]+) = pls_perception\.[\w.]+:main'", text)


def _tracked(*folders: str) -> list[str]:
    """The files git tracks under ``folders`` of the source tree."""
    result = subprocess.run(['git', 'ls-files', *folders], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        pytest.skip(f'not a git checkout, cannot list the source files: {result.stderr.strip()}')
    return sorted(result.stdout.split())


@pytest.fixture(scope='module')
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``build('copy' | 'symlink')`` -> that install dir, built once per module."""
    built: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in built:
            extra = ['--symlink-install'] if kind == 'symlink' else []
            built[kind] = launch_support.colcon_build(
                tmp_path_factory.mktemp(f'colcon_{kind}'), *extra)
        return built[kind]
    return get


@pytest.fixture(scope='module', params=['copy', 'symlink'])
def install(request: pytest.FixtureRequest, build: Callable[[str], Path]) -> Path:
    return build(request.param)


def sourced_env(install: Path, **extra: str) -> dict[str, str]:
    """The environment after ``. install/setup.bash`` on top of this venv's ROS (as a user's
    shell would have it), plus ``extra``."""
    base = {k: v for k, v in os.environ.items()
            if k not in ('AMENT_PREFIX_PATH', 'PYTHONPATH', 'COLCON_PREFIX_PATH')}
    base.update(AMENT_PREFIX_PATH=sys.prefix, **extra)
    result = subprocess.run(['bash', '-c', f'. "{install}/setup.bash" && env -0'], env=base,
                            capture_output=True, check=True, timeout=60)
    return dict(item.split('=', 1) for item in result.stdout.decode().split('\0') if '=' in item)


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
    source = _tracked('launch', 'config')
    assert 'config/plans/resnet152_cifar10_ref_greedy.yaml' in source
    installed = sorted(str(p.relative_to(share)) for folder in ('launch', 'config')
                       for p in (share / folder).rglob('*') if p.is_file())
    assert installed == source
    for name in source:
        assert (share / name).read_bytes() == (REPO_ROOT / name).read_bytes(), name
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
    script = (f'"{sys.executable}" -c \'{probe}\' && '
              f'"{install}/{PACKAGE_NAME}/lib/{PACKAGE_NAME}/pls-bag" --help')
    result = subprocess.run(['bash', '-c', script], cwd=tmp_path, env=sourced_env(install),
                            capture_output=True, text=True, timeout=120)
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
    passing = colcon(base, 'test', '--return-code-on-test-failure', '--pytest-args',
                     'test/test_bags.py::test_publish_offsets')
    assert passing.returncode == 0, passing.stdout + passing.stderr
    xml = (base / 'build' / PACKAGE_NAME / 'pytest.xml').read_text()
    assert 'test_publish_offsets' in xml and 'failures="0"' in xml
    probe = tmp_path / 'test_failing_probe.py'
    probe.write_text('def test_fails() -> None:\n    assert 1 == 2\n')
    failing = colcon(base, 'test', '--return-code-on-test-failure', '--pytest-args', str(probe))
    assert failing.returncode != 0
    assert 'had test failures' in failing.stdout + failing.stderr


@needs_ros2
@needs_data
def test_perception_launch_from_install_classifies(install: Path, tmp_path: Path) -> None:
    env = sourced_env(install)  # a copy install searches no checkout: data paths are explicit
    weights = str(paths.find_reference_weights())
    with open(tmp_path / 'images.log', 'wb') as log:
        images = subprocess.Popen(
            [str(install / PACKAGE_NAME / 'lib' / PACKAGE_NAME / 'image_source'), '--ros-args',
             '-p', f'source:={paths.find_cifar10_tar()}', '-p', 'per_class:=2',
             '-p', 'rate_hz:=5.0', '-p', 'loop:=true'],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with RosLaunch([PACKAGE_NAME, 'perception.launch.py', f'weights:={weights}'],
                       tmp_path / 'launch.log', env) as run:
            run.wait_for_output('active: classifying', CONFIGURE_TIMEOUT_S)
            launch_support.poll(lambda: launch_support.ros2_cli(
                'topic', 'echo', '--once', launch_support.CLASSIFICATION, env=env,
                timeout_s=30.0), lambda out: 'class_id' in out, 60.0)
            assert run.stop() == 0, run.output()
        assert f'configured: {weights}' in run.output()
        assert not launch_support.bad_lines(run.output()), run.output()
    finally:
        launch_support.ros2_cli('daemon', 'stop', env=env)
        images.send_signal(signal.SIGINT)
        assert images.wait(30) == 0, (tmp_path / 'images.log').read_text()


@needs_ros2
def test_copy_install_without_data_fails_loudly(build: Callable[[str], Path],
                                                tmp_path: Path) -> None:
    # A copy install has no checkout beside it: with an empty user data dir nothing is found.
    install = build('copy')
    env = sourced_env(install, XDG_DATA_HOME=str(tmp_path))
    env.pop('PLS_SHARED_DIR', None)
    share = install / PACKAGE_NAME / 'share' / PACKAGE_NAME
    looked = (f'{share} (installed share), {tmp_path / PACKAGE_NAME} (user data dir); export '
              'PLS_SHARED_DIR=<dir with ')
    with RosLaunch([PACKAGE_NAME, 'perception.launch.py'], tmp_path / 'launch.log', env) as run:
        run.wait_for_output('configure failed: reference weights not found', 120.0)
        (line,) = [line for line in run.output().splitlines() if 'configure failed' in line]
        assert f'looked for models/resnet152_cifar10_ref.pt in {looked}' in line, line
        assert run.stop() == 0, run.output()
    assert 'active: classifying' not in run.output()

    source = subprocess.run(
        [str(install / PACKAGE_NAME / 'lib' / PACKAGE_NAME / 'image_source')], env=env,
        capture_output=True, text=True, timeout=120)
    assert source.returncode == 2, source
    assert (f'CIFAR-10 tarball not found: looked for data/cifar10/cifar10-jpg.tar.gz in '
            f'{looked}') in source.stderr, source
