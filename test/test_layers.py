"""The package's architecture as a rule: subpackages import only from the layers below them, and
only the node layer (and the tools and test harness above it) imports ROS.

Layers, bottom up (docs/architecture.md): errors/paths, io, skipping, operating_points,
dvfs | engines, pipeline, nodes, testing, tools.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pls_perception import paths

PACKAGE = paths.REPO_ROOT / 'pls_perception'
LAYERS = {'': 0, 'io': 1, 'skipping': 2, 'operating_points': 3, 'dvfs': 4, 'engines': 4,
          'pipeline': 5, 'nodes': 6, 'testing': 7, 'tools': 8}
ROS_LAYERS = {'nodes', 'testing', 'tools'}
ROS_MODULES = ('rclpy', 'launch', 'launch_ros', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs',
               'lifecycle_msgs', 'rcl_interfaces', 'vision_msgs')


def _subpackage(module: str) -> str:
    """'pls_perception.skipping.network' -> 'skipping'; top-level modules -> ''."""
    parts = module.split('.')
    candidate = parts[1] if len(parts) > 2 else ''
    return candidate if (PACKAGE / candidate).is_dir() else ''


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f'{node.module}.{a.name}' for a in node.names]
    return names


MODULES = sorted(PACKAGE.rglob('*.py'))


def test_every_module_belongs_to_a_known_layer() -> None:
    for path in MODULES:
        sub = path.relative_to(PACKAGE).parts[0] if len(path.relative_to(PACKAGE).parts) > 1 \
            else ''
        assert sub in LAYERS, f'{path}: subpackage {sub!r} has no layer in {LAYERS}'


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_only_downwards(path: Path) -> None:
    rel = path.relative_to(PACKAGE)
    own = rel.parts[0] if len(rel.parts) > 1 else ''
    upward = [name for name in _imports(path) if name.startswith('pls_perception.')
              and LAYERS[_subpackage(name)] > LAYERS[own]]
    assert not upward, f'{rel} ({own or "top"}) imports from a higher layer: {upward}'
    if own not in ROS_LAYERS:
        ros = [n for n in _imports(path) if n.split('.')[0] in ROS_MODULES]
        assert not ros, f'{rel} is ROS-free core but imports {ros}'
