"""Shared session fixtures: a small synthetic nuScenes root and its info files."""
import pytest

from projects.streampetr.datasets.nuscenes_converter import create_nuscenes_infos
from projects.streampetr.datasets.synthetic_nuscenes import make_synthetic_nuscenes

# One mini_train scene (scene-0061) and one mini_val scene (scene-0103).
SYNTHETIC_SCENES = 2
SYNTHETIC_SAMPLES = 6
SYNTHETIC_IMAGE_SIZE = (400, 225)


@pytest.fixture(scope='session')
def nusc_root(tmp_path_factory):
    """Path (str) of a synthetic v1.0-mini root: 2 scenes x 6 key frames, 400x225 images."""
    root = tmp_path_factory.mktemp('synthetic') / 'nuscenes'
    make_synthetic_nuscenes(root, SYNTHETIC_SCENES, SYNTHETIC_SAMPLES, SYNTHETIC_IMAGE_SIZE,
                            seed=0, progress=False)
    return str(root)


@pytest.fixture(scope='session')
def nusc_infos(nusc_root, tmp_path_factory):
    """{'root': nuScenes root, 'train': info .pkl path, 'val': info .pkl path}."""
    paths = create_nuscenes_infos(nusc_root, 'v1.0-mini', str(tmp_path_factory.mktemp('infos')),
                                  progress=False)
    return dict(root=nusc_root, **paths)
