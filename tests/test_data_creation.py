"""The synthetic nuScenes generator and the info-file converter, checked with the real devkit."""
import json
import shutil
from pathlib import Path

import matplotlib
import mmengine
import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.detection.constants import DETECTION_NAMES
from nuscenes.eval.detection.utils import (category_to_detection_name,
                                           detection_name_to_rel_attributes)
from nuscenes.utils.geometry_utils import BoxVisibility, view_points
from nuscenes.utils.splits import create_splits_scenes
from PIL import Image
from pyquaternion import Quaternion

from projects.streampetr.datasets import synthetic_nuscenes
from projects.streampetr.datasets.nuscenes_converter import (CAMERAS, CLASSES, VERSION_SPLITS,
                                                             create_nuscenes_infos)
from projects.streampetr.datasets.synthetic_nuscenes import (OBJECT_CLASSES,
                                                             make_synthetic_nuscenes)
from tool_loader import load_tool

matplotlib.use('Agg')
REPO = Path(__file__).resolve().parents[1]
CATEGORY_RGB = {category: spec.rgb for spec in OBJECT_CLASSES.values()
                for category, _ in spec.categories}
INSTANCE_KEYS = {'bbox_3d', 'bbox_label', 'bbox_label_3d', 'bbox_3d_isvalid', 'velocity',
                 'num_lidar_pts', 'num_radar_pts', 'attr_label'}


@pytest.fixture(scope='module')
def nusc(nusc_root):
    return NuScenes(version='v1.0-mini', dataroot=nusc_root, verbose=False)


@pytest.fixture(scope='module')
def infos(nusc_infos):
    return {split: mmengine.load(nusc_infos[split]) for split in ('train', 'val')}


def scene_samples(nusc, scene):
    samples, token = [], scene['first_sample_token']
    while token:
        samples.append(nusc.get('sample', token))
        token = samples[-1]['next']
    return samples


def test_devkit_loads_every_class_in_every_scene(nusc):
    splits = create_splits_scenes()
    names = [scene['name'] for scene in nusc.scene]
    assert names == ['scene-0061', 'scene-0103']
    assert names[0] in splits['mini_train'] and names[1] in splits['mini_val']
    attribute_name = {a['token']: a['name'] for a in nusc.attribute}
    for scene in nusc.scene:
        samples = scene_samples(nusc, scene)
        assert len(samples) == scene['nbr_samples'] == 6
        stamps = np.array([s['timestamp'] for s in samples])
        assert stamps.min() > 1.5e15 and np.all(np.abs(np.diff(stamps) / 1e6 - 0.5) < 0.02)
        classes = set()
        for sample in samples:
            ego = nusc.get('ego_pose', nusc.get('sample_data',
                                                sample['data']['LIDAR_TOP'])['ego_pose_token'])
            assert set(sample['data']) == {*CAMERAS, 'LIDAR_TOP'}
            for token in sample['anns']:
                ann = nusc.get('sample_annotation', token)
                name = category_to_detection_name(ann['category_name'])
                assert ann['num_lidar_pts'] > 0
                assert ann['visibility_token'] in {'1', '2', '3', '4'}
                assert np.all(np.isfinite(nusc.box_velocity(token)))
                if name is None:
                    continue
                classes.add(name)
                attrs = [attribute_name[t] for t in ann['attribute_tokens']]
                allowed = detection_name_to_rel_attributes(name)
                assert len(attrs) == (1 if allowed else 0) and set(attrs) <= set(allowed)
                dist = np.linalg.norm(np.subtract(ann['translation'], ego['translation'])[:2])
                assert dist < OBJECT_CLASSES[name].range_m
        assert classes == set(DETECTION_NAMES)
    speeds = [np.linalg.norm(nusc.box_velocity(a['token'])) for a in nusc.sample_annotation]
    assert max(speeds) > 1.0 and min(speeds) < 1e-6  # some objects move, some stand still


def test_devkit_helpers_read_images_points_and_map(nusc, nusc_root, tmp_path):
    sample = nusc.sample[0]
    path, boxes, intrinsic = nusc.get_sample_data(sample['data']['CAM_FRONT'])
    assert Image.open(path).size == (400, 225)
    assert intrinsic.shape == (3, 3) and 150 < intrinsic[0, 2] < 250
    assert sum(len(nusc.get_sample_data(sample['data'][cam])[1]) for cam in CAMERAS) > 0
    points = np.fromfile(nusc.get_sample_data_path(sample['data']['LIDAR_TOP']), np.float32)
    assert points.reshape(-1, 5).shape[0] > 1000
    nusc.render_sample(sample['token'], out_path=str(tmp_path / 'sample.png'), verbose=False)
    assert (tmp_path / 'sample.png').stat().st_size > 10_000
    log = nusc.get('log', nusc.scene[0]['log_token'])
    ego = nusc.get('ego_pose', nusc.get('sample_data', sample['data']['LIDAR_TOP'])[
        'ego_pose_token'])
    mask = nusc.get('map', log['map_token'])['mask']
    assert mask.is_on_mask(ego['translation'][0], ego['translation'][1])[0]  # ego is on the road


def test_images_show_the_annotated_boxes(nusc):
    """The pixel under the projected centre of a fully visible box has its class colour."""
    checked, matched = 0, 0
    for sample in nusc.sample:
        for cam in CAMERAS:
            path, boxes, intrinsic = nusc.get_sample_data(sample['data'][cam],
                                                          box_vis_level=BoxVisibility.ALL)
            image = np.asarray(Image.open(path).convert('RGB'), dtype=np.float64)
            for box in boxes:
                if nusc.get('sample_annotation', box.token)['visibility_token'] != '4':
                    continue
                u, v = np.round(view_points(box.center[:, None], intrinsic, True)[:2, 0])
                pixel = image[int(v), int(u)]
                rgb = np.asarray(CATEGORY_RGB[box.name], dtype=np.float64)
                checked += 1
                matched += min(np.abs(pixel - rgb).max(), np.abs(pixel - 0.7 * rgb).max()) < 30
    assert checked > 20 and matched / checked > 0.9


def test_generator_is_deterministic_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    def tree(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*'))
                if p.is_file()}

    args = dict(num_scenes=1, num_samples=2, image_size=(160, 90), progress=False)
    first = tree(make_synthetic_nuscenes(tmp_path / 'a', seed=3, **args))
    assert first == tree(make_synthetic_nuscenes(tmp_path / 'b', seed=3, **args))
    other = tree(make_synthetic_nuscenes(tmp_path / 'c', seed=4, **args))
    assert other[Path('v1.0-mini/sample_annotation.json')] != \
        first[Path('v1.0-mini/sample_annotation.json')]

    def broken_sweep(*_):
        raise RuntimeError('disk full')

    monkeypatch.setattr(synthetic_nuscenes, '_lidar_sweep', broken_sweep)
    with pytest.raises(RuntimeError, match='disk full'):
        make_synthetic_nuscenes(tmp_path / 'd', seed=3, **args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a', 'b', 'c']


def test_generator_cli_and_its_errors(tmp_path):
    tool = load_tool('make_synthetic_nuscenes')
    out = tmp_path / 'synthetic'
    tool.main([str(out), '--scenes', '1', '--samples', '2', '--image-size', '160', '90'])
    sample_data = json.loads((out / 'v1.0-mini' / 'sample_data.json').read_text())
    assert {(sd['width'], sd['height']) for sd in sample_data if sd['fileformat'] == 'jpg'} == \
        {(160, 90)}
    with pytest.raises(SystemExit, match=f'{out}.*not empty'):
        tool.main([str(out)])
    with pytest.raises(SystemExit, match=r'--scenes must be 1\.\.10'):
        tool.main([str(tmp_path / 'more'), '--scenes', '11'])
    with pytest.raises(SystemExit, match='--samples must be >= 2'):
        tool.main([str(tmp_path / 'fewer'), '--samples', '1'])
    with pytest.raises(SystemExit, match='--max-range must be at least 20 m, got 5.0'):
        tool.main([str(tmp_path / 'near'), '--max-range', '5'])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['synthetic']


def test_max_range_keeps_every_annotation_near_the_ego(tmp_path):
    def distances(root):
        nusc = NuScenes('v1.0-mini', str(root), verbose=False)
        out = []
        for ann in nusc.sample_annotation:
            sample = nusc.get('sample', ann['sample_token'])
            pose = nusc.get('ego_pose', nusc.get('sample_data',
                                                 sample['data']['LIDAR_TOP'])['ego_pose_token'])
            out.append(np.hypot(*(np.subtract(ann['translation'], pose['translation'])[:2])))
        return np.asarray(out)

    # Enough key frames for every object to find a free place near the ego path.
    args = dict(num_scenes=1, num_samples=12, image_size=(160, 90), progress=False)
    far = distances(make_synthetic_nuscenes(tmp_path / 'far', **args))
    near = distances(make_synthetic_nuscenes(tmp_path / 'near', max_range_m=25.0, **args))
    assert far.max() > 30.0  # cars and larger classes reach the devkit's 50 m
    assert near.max() < 25.0 and len(near) > 20


def test_info_files_follow_the_data_contract(infos, nusc, nusc_root):
    for split, scene_name in (('train', 'scene-0061'), ('val', 'scene-0103')):
        metainfo, items = infos[split]['metainfo'], infos[split]['data_list']
        assert metainfo['version'] == 'v1.0-mini' and metainfo['dataset'] == 'nuscenes'
        assert metainfo['info_version'] == '1.1'
        assert [metainfo['categories'][c] for c in CLASSES] == list(range(len(CLASSES)))
        assert len(items) == 6
        for idx, item in enumerate(items):
            sample = nusc.get('sample', item['token'])
            assert nusc.get('scene', item['scene_token'])['name'] == scene_name
            assert item['sample_idx'] == idx
            assert isinstance(item['timestamp'], float)  # a python float is float64
            assert item['timestamp'] == sample['timestamp'] / 1e6
            assert (item['prev'], item['next']) == (sample['prev'], sample['next'])
            assert item['prev'] == (items[idx - 1]['token'] if idx else '')
            assert item['next'] == (items[idx + 1]['token'] if idx + 1 < len(items) else '')
            assert np.asarray(item['ego2global']).shape == (4, 4)
            lidar = item['lidar_points']
            assert lidar['num_pts_feats'] == 5 and np.asarray(lidar['lidar2ego']).shape == (4, 4)
            assert (Path(nusc_root) / 'samples' / 'LIDAR_TOP' / lidar['lidar_path']).is_file()
            assert list(item['images']) == list(CAMERAS) == list(item['cam_instances'])
            for cam, image in item['images'].items():
                assert (Path(nusc_root) / 'samples' / cam / image['img_path']).is_file()
                assert np.asarray(image['cam2img']).shape == (3, 3)
                assert np.asarray(image['cam2ego']).shape == (4, 4)
                assert np.asarray(image['lidar2cam']).shape == (4, 4)
                assert abs(image['timestamp'] - item['timestamp']) < 0.05
            assert len(item['instances']) == len(sample['anns'])
            for inst, ann_token in zip(item['instances'], sample['anns']):
                assert set(inst) == INSTANCE_KEYS
                category = nusc.get('sample_annotation', ann_token)['category_name']
                name = category_to_detection_name(category)
                assert inst['bbox_label'] == inst['bbox_label_3d'] == \
                    (CLASSES.index(name) if name else -1)
                assert len(inst['bbox_3d']) == 7 and len(inst['velocity']) == 2
                assert inst['bbox_3d_isvalid'] and inst['num_lidar_pts'] > 0
                assert 0 <= inst['attr_label'] <= 8
        timestamps = [item['timestamp'] for item in items]
        assert timestamps == sorted(timestamps)


def test_boxes_convert_back_to_the_devkit_global_boxes(infos, nusc):
    for split in ('train', 'val'):
        for item in infos[split]['data_list']:
            lidar2global = np.asarray(item['ego2global']) @ np.asarray(
                item['lidar_points']['lidar2ego'])
            rotation = lidar2global[:3, :3]
            sample = nusc.get('sample', item['token'])
            for inst, ann_token in zip(item['instances'], sample['anns']):
                ann = nusc.get('sample_annotation', ann_token)
                x, y, z, length, width, height, yaw = inst['bbox_3d']
                center = rotation @ [x, y, z] + lidar2global[:3, 3]
                np.testing.assert_allclose(center, ann['translation'], atol=1e-6)
                np.testing.assert_allclose([width, length, height], ann['size'], atol=1e-9)
                global_yaw = yaw + np.arctan2(rotation[1, 0], rotation[0, 0])
                error = global_yaw - Quaternion(ann['rotation']).yaw_pitch_roll[0]
                assert abs(np.arctan2(np.sin(error), np.cos(error))) < 1e-6
                velocity = rotation @ [*inst['velocity'], 0.0]
                np.testing.assert_allclose(velocity[:2], nusc.box_velocity(ann_token)[:2],
                                           atol=1e-6)


def test_cam_instances_are_the_boxes_the_devkit_sees_in_each_image(infos, nusc):
    """As StreamPETR's converter selects them: labelled boxes whose centre is in front of the
    camera and whose projection, cut to the image, is at least 1 pixel wide and high; the centre
    may project outside the image. Checked against the devkit's boxes in the camera frame: the
    hull of the projected corners cut to the image (shapely) for boxes wholly in front; a box
    crossing the camera plane has at least the hull of its front corners."""
    from shapely.geometry import MultiPoint, box as shapely_box
    off_image_centres = 0
    for split in ('train', 'val'):
        for item in infos[split]['data_list']:
            sample = nusc.get('sample', item['token'])
            seen = set()
            for cam in CAMERAS:
                width, height = item['images'][cam]['width'], item['images'][cam]['height']
                canvas = shapely_box(0, 0, width, height)
                found = item['cam_instances'][cam]
                for inst in found:
                    x1, y1, x2, y2 = inst['bbox']
                    assert 0 <= x1 and x1 + 1 <= x2 <= width and 0 <= y1 and y1 + 1 <= y2 <= height
                    assert inst['depth'] > 0 and 0 <= inst['bbox_label'] < len(CLASSES)
                _, boxes, intrinsic = nusc.get_sample_data(sample['data'][cam],
                                                           box_vis_level=BoxVisibility.NONE)
                expected, crossing = [], []
                for box in boxes:
                    name = category_to_detection_name(box.name)
                    corners = box.corners()
                    if not name or box.center[2] <= 0 or not (corners[2] > 0).any():
                        continue
                    uv = view_points(box.center[:, None], intrinsic, True)[:2, 0]
                    front = corners[:, corners[2] > 0.1]
                    hull = MultiPoint(view_points(front, intrinsic, True)[:2].T.tolist()
                                      ).convex_hull.intersection(canvas)
                    entry = (*uv, box.center[2], CLASSES.index(name))
                    if (corners[2] <= 0.1).any():
                        crossing.append((entry, hull, box.token))
                        continue
                    if not hull.is_empty:
                        bx1, by1, bx2, by2 = hull.bounds
                        if bx2 - bx1 >= 1 and by2 - by1 >= 1:
                            expected.append((entry, hull.bounds))
                            seen.add(box.token)
                            off_image_centres += not (0 <= uv[0] < width and 0 <= uv[1] < height)
                got = {(*inst['center_2d'], inst['depth'], inst['bbox_label']): inst['bbox']
                       for inst in found}
                for entry, bounds in expected:
                    match = [k for k in got if np.allclose(k, entry, atol=1e-6)]
                    assert len(match) == 1, (cam, entry)
                    np.testing.assert_allclose(got.pop(match[0]), bounds, atol=1e-6)
                for key, bbox in got.items():  # the rest must be boxes crossing the camera plane
                    match = [(hull, token) for entry, hull, token in crossing
                             if np.allclose(key, entry, atol=1e-6)]
                    assert len(match) == 1, (cam, key)
                    hull, token = match[0]
                    seen.add(token)
                    if not hull.is_empty:
                        bx1, by1, bx2, by2 = hull.bounds
                        assert bbox[0] <= bx1 + 1e-6 and bbox[1] <= by1 + 1e-6
                        assert bbox[2] >= bx2 - 1e-6 and bbox[3] >= by2 - 1e-6
            labelled = {token for token, inst in zip(sample['anns'], item['instances'])
                        if inst['bbox_label'] >= 0}
            assert seen == labelled  # six cameras see every labelled object
    assert off_image_centres > 0  # the synthetic scenes have boxes cut by the image border


def test_create_data_errors_name_the_problem_and_write_nothing(nusc, nusc_root, tmp_path):
    out = tmp_path / 'out'
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nowhere')):
        create_nuscenes_infos(str(tmp_path / 'nowhere'), 'v1.0-mini', str(out))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'v1.0-trainval')):
        create_nuscenes_infos(str(tmp_path), 'v1.0-trainval', str(out))
    with pytest.raises(ValueError, match="'v2.0'.*" + '.*'.join(VERSION_SPLITS)):
        create_nuscenes_infos(nusc_root, 'v2.0', str(out))

    # A root whose val scene has a camera without intrinsics: train converts, val fails.
    broken = tmp_path / 'broken'
    shutil.copytree(Path(nusc_root) / 'v1.0-mini', broken / 'v1.0-mini')
    for folder in ('samples', 'maps'):
        (broken / folder).symlink_to(Path(nusc_root) / folder)
    table = broken / 'v1.0-mini' / 'calibrated_sensor.json'
    calibrations = json.loads(table.read_text())
    val_scene = next(scene for scene in nusc.scene if scene['name'] == 'scene-0103')
    cam_token = nusc.get('sample', val_scene['first_sample_token'])['data']['CAM_BACK']
    calib_token = nusc.get('sample_data', cam_token)['calibrated_sensor_token']
    val_calib = next(c for c in calibrations if c['token'] == calib_token)
    val_calib['camera_intrinsic'] = []
    table.write_text(json.dumps(calibrations))
    with pytest.raises(ValueError, match=f"{val_calib['token']}.*camera_intrinsic"):
        create_nuscenes_infos(str(broken), 'v1.0-mini', str(out), progress=False)
    assert not out.exists() or not any(out.iterdir())

    tool = load_tool('create_data')
    with pytest.raises(SystemExit, match=str(tmp_path / 'nowhere')):
        tool.main(['nuscenes', '--root-path', str(tmp_path / 'nowhere'), '--version',
                   'v1.0-mini', '--out-dir', str(out)])
    with pytest.raises(SystemExit, match='v1.0-trainval, v1.0-mini, v1.0-test'):
        tool.main(['nuscenes', '--root-path', nusc_root, '--version', 'v1.0', '--out-dir',
                   str(out)])


def test_create_data_cli_writes_tagged_infos(nusc_infos, tmp_path):
    load_tool('create_data').main(['nuscenes', '--root-path', nusc_infos['root'], '--version',
                                   'v1.0-mini', '--out-dir', str(tmp_path), '--extra-tag',
                                   'synthetic'])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['synthetic_infos_train.pkl',
                                                          'synthetic_infos_val.pkl']
    for split in ('train', 'val'):  # same input, same output
        assert mmengine.load(tmp_path / f'synthetic_infos_{split}.pkl') == \
            mmengine.load(nusc_infos[split])
