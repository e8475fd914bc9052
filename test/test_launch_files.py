"""Launch files without launch_ros: they compile, name real executables and real config files.

This runs in every environment, also without the ROS 2 launch tools; the launch_testing tests
(test_launch_demo.py, test_launch_perception_*.py, test_launch_dvfs_manager.py) and the ros2 CLI
journey (test_launch_ros2_cli.py) run the files for real wherever those tools are installed.
"""
from __future__ import annotations

import ast
import py_compile
import re
from pathlib import Path

import pytest
import yaml

from pls_perception import paths

LAUNCH_DIR = paths.REPO_ROOT / 'launch'
LAUNCH_FILES = sorted(LAUNCH_DIR.glob('*.launch.py'))
NODE_NAMES = {'perception_node': 'pls_perception_node', 'dvfs_manager': 'dvfs_manager',
              'image_source': 'image_source', 'budget_schedule': 'budget_schedule'}


def _console_scripts() -> set[str]:
    setup = (paths.REPO_ROOT / 'setup.py').read_text()
    return set(re.findall(r"'([\w-]+) = pls_perception\.", setup))


def _calls(path: Path, name: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def _kwargs(call: ast.Call) -> dict[str, object]:
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg and isinstance(k.value, ast.Constant)}


def test_the_three_launch_files_exist() -> None:
    assert {p.name for p in LAUNCH_FILES} >= {
        'demo.launch.py', 'perception.launch.py', 'dvfs_manager.launch.py'}


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_compiles_and_defines_generate_launch_description(path: Path, tmp_path: Path) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / 'x.pyc'), doraise=True)
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_nodes_are_package_executables_with_their_names(path: Path) -> None:
    scripts = _console_scripts()
    nodes = _calls(path, 'Node') + _calls(path, 'LifecycleNode')
    for call in nodes:
        kw = _kwargs(call)
        assert kw['package'] == 'pls_perception'
        assert kw['executable'] in scripts, kw
        assert kw['name'] == NODE_NAMES[kw['executable']], kw
        assert any(k.arg == 'parameters' for k in call.keywords), kw
    if path.name == 'perception.launch.py':
        assert [_kwargs(c)['namespace'] for c in _calls(path, 'LifecycleNode')] == ['']


def test_perception_launch_autostart_is_the_nodes_own_parameter() -> None:
    # the node configures and activates itself: no change_state requests from the launch process
    path = LAUNCH_DIR / 'perception.launch.py'
    (node,) = _calls(path, 'LifecycleNode')
    parameters = ast.unparse(next(k.value for k in node.keywords if k.arg == 'parameters'))
    assert "'autostart': LaunchConfiguration('autostart')" in parameters
    assert not _calls(path, 'EmitEvent') and not _calls(path, 'OnStateTransition')


def test_demo_launch_arguments_and_included_files() -> None:
    path = LAUNCH_DIR / 'demo.launch.py'
    declared = {ast.literal_eval(c.args[0]) for c in _calls(path, 'DeclareLaunchArgument')}
    assert declared >= {'weights', 'images', 'device', 'profile', 'budget_schedule',
                        'log_level'}
    for call in _calls(path, 'PythonLaunchDescriptionSource'):
        included = re.search(r"'([\w.]+\.launch\.py)'", ast.unparse(call)).group(1)
        assert (LAUNCH_DIR / included).is_file()


@pytest.mark.parametrize('name', ['dvfs_manager.yaml', 'demo.yaml', 'perception.yaml'])
def test_params_files_are_ros_parameter_files_for_our_nodes(name: str) -> None:
    data = yaml.safe_load((paths.config_dir() / name).read_text())
    assert data and set(data) <= set(NODE_NAMES.values())
    assert all(set(section) == {'ros__parameters'} for section in data.values())


def test_demo_yaml_schedule_and_node_defaults_parse() -> None:
    from pls_perception.operating_points.budget_schedule import BudgetSchedule
    data = yaml.safe_load((paths.config_dir() / 'demo.yaml').read_text())
    schedule = data['budget_schedule']['ros__parameters']
    assert BudgetSchedule(schedule['schedule'], loop=schedule['loop']).period_s > 0
