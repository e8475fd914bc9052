#!/usr/bin/env bash
# Create or update the dev/CI virtual environment of pls_perception (pip ROS 2, no apt needed).
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/setup-venv.sh [--venv DIR] [--shared DIR] [-h|--help]

Creates the virtual environment (default: .venv in the repository) if it does not exist and
installs into it:
  * requirements-test.txt (rclpy + messages from PyPI, torch, pytest, colcon) and the package
    itself in editable mode (pip install -e .);
  * when SHARED/wheels/ros2-jazzy exists: the ROS 2 Jazzy launch, launch_testing and ros2 CLI
    wheels (--no-deps) plus their PyPI dependencies (requirements-ros-tools.txt), so the launch
    tests run instead of skipping and `ros2 launch|topic|param|lifecycle` work;
  * when SHARED/wheels/vision-msgs exists: the vision_msgs wheel and ros-jazzy-geometry-msgs.

SHARED is --shared, else $PLS_SHARED_DIR, else ../shared next to the repository. Running it again
updates the environment in place. On a machine with an apt ROS 2, source /opt/ros/jazzy and
install only requirements.txt instead.

Then run the tests with:  .venv/bin/python -m pytest
USAGE
}

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="$repo/.venv"
shared="${PLS_SHARED_DIR:-$repo/../shared}"
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --venv) venv="${2:?--venv needs a directory}"; shift 2 ;;
        --shared) shared="${2:?--shared needs a directory}"; shift 2 ;;
        *) echo "setup-venv.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

cd "$repo"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q)
"${pip[@]}" -r requirements-test.txt -e .

ros_wheels="$shared/wheels/ros2-jazzy"
if [ -d "$ros_wheels" ]; then
    "${pip[@]}" --no-deps "$ros_wheels"/*.whl
    "${pip[@]}" -r requirements-ros-tools.txt
else
    echo "setup-venv.sh: no $ros_wheels: launch tests and the ros2 CLI will be skipped" >&2
fi
vision_wheels="$shared/wheels/vision-msgs"
if [ -d "$vision_wheels" ]; then
    "${pip[@]}" ros-jazzy-geometry-msgs==5.3.6 "$vision_wheels"/*.whl
else
    echo "setup-venv.sh: no $vision_wheels: vision_msgs not installed" >&2
fi
echo "setup-venv.sh: ready: $venv"
