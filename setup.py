from setuptools import find_packages, setup

setup(
    name='mmdp',
    version='0.1.0',
    description='Multi-dimensional, latency-aware pruning of StreamPETR on MMDetection3D 1.x',
    packages=find_packages(include=['mmdp', 'mmdp.*', 'projects', 'projects.*']),
    python_requires='>=3.9',
    install_requires=[
        'torch==2.13.0', 'numpy<2', 'mmengine==0.10.7', 'mmcv==2.1.0', 'mmdet==3.3.0',
        'nuscenes-devkit==1.2.0', 'pyomo', 'highspy', 'tqdm',
    ],
    # Optional: the Torch-Pruning baseline; the mdp backend 'mindtpy' (`make install-mindtpy`
    # also installs GLPK and libipopt).
    extras_require={'torch-pruning': ['torch-pruning==1.6.1'], 'mindtpy': ['cyipopt']},
)
