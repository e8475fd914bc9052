"""ament_python package: energy-aware image classification under a latency budget."""
import os

from setuptools import find_packages, setup

package_name = 'pls_perception'


def tree(folder):
    """data_files entries installing every file under ``folder`` to share/<package>/<folder>."""
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        if files:
            entries.append((os.path.join('share', package_name, root),
                            sorted(os.path.join(root, f) for f in files)))
    return entries


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'bench', 'bench.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        *tree('launch'),
        *tree('config'),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='pls_perception developers',
    maintainer_email='pls-perception@example.com',
    description='Proportional Layer Skipping + DVFS: energy-aware CNN classification '
                'under a latency budget for ROS 2.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            # ROS executables (ros2 run pls_perception <name>)
            'perception_node = pls_perception.nodes.perception_node:main',
            'dvfs_manager = pls_perception.nodes.dvfs_manager_node:main',
            'image_source = pls_perception.nodes.image_source_node:main',
            'budget_schedule = pls_perception.nodes.budget_schedule_node:main',
            # Tools
            'pls-eval = pls_perception.tools.eval_cli:main',
            'pls-profile = pls_perception.tools.profile_cli:main',
            'pls-plot = pls_perception.tools.plot_cli:main',
            'pls-solve = pls_perception.tools.solve_cli:main',
            'pls-demo = pls_perception.tools.demo:main',
            'pls-bag = pls_perception.tools.bag_cli:main',
            'pls-plan = pls_perception.tools.plan_cli:main',
            'pls-train = pls_perception.tools.train_cli:main',
        ],
    },
)
