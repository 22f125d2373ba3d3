"""nuScenes tables -> mmdet3d v2 info files with the keys streaming detection needs.

One item per key frame, sorted by scene name then time, in mmdet3d's v2 layout (as written by
mmdet3d's ``update_infos_to_v2.py``) plus ``scene_token``, ``prev``/``next`` and per-camera 2D
boxes. Boxes are in the LiDAR frame: gravity centre, ``[x, y, z, l, w, h, yaw]`` with the 1.x yaw
(angle of the box's length axis from LiDAR x), velocity ``(vx, vy)`` in the LiDAR frame.
All matrices are float64 (mmdet3d's float32 ``ego2global`` loses centimetres at 1 km).
"""
import os
import os.path as osp
import tempfile
import warnings

import mmengine
import numpy as np
from nuscenes import NuScenes
from nuscenes.utils.geometry_utils import transform_matrix, view_points
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion
from shapely.geometry import MultiPoint, box as shapely_box
from tqdm import tqdm

# mmdet3d's NuScenesDataset class order: labels index this tuple.
CLASSES = ('car', 'truck', 'trailer', 'bus', 'construction_vehicle', 'bicycle', 'motorcycle',
           'pedestrian', 'traffic_cone', 'barrier')
# nuScenes category -> detection class (the devkit's detection mapping).
CATEGORY_TO_CLASS = {
    'movable_object.barrier': 'barrier',
    'vehicle.bicycle': 'bicycle',
    'vehicle.bus.bendy': 'bus',
    'vehicle.bus.rigid': 'bus',
    'vehicle.car': 'car',
    'vehicle.construction': 'construction_vehicle',
    'vehicle.motorcycle': 'motorcycle',
    'human.pedestrian.adult': 'pedestrian',
    'human.pedestrian.child': 'pedestrian',
    'human.pedestrian.construction_worker': 'pedestrian',
    'human.pedestrian.police_officer': 'pedestrian',
    'movable_object.trafficcone': 'traffic_cone',
    'vehicle.trailer': 'trailer',
    'vehicle.truck': 'truck',
}
# mmdet3d's attribute order for ``attr_label`` ('None': no attribute).
ATTRIBUTES = ('cycle.with_rider', 'cycle.without_rider', 'pedestrian.moving',
              'pedestrian.standing', 'pedestrian.sitting_lying_down', 'vehicle.moving',
              'vehicle.parked', 'vehicle.stopped', 'None')
CAMERAS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT',
           'CAM_BACK_RIGHT')
LIDAR = 'LIDAR_TOP'
# version -> {info file split name: devkit split name}
VERSION_SPLITS = {
    'v1.0-trainval': {'train': 'train', 'val': 'val'},
    'v1.0-mini': {'train': 'mini_train', 'val': 'mini_val'},
    'v1.0-test': {'test': 'test'},
}
# Box parts closer to the camera than this (metres) are cut off before projecting.
NEAR_PLANE = 0.1


def pose_matrix(record: dict) -> np.ndarray:
    """4x4 float64 transform of a calibrated_sensor or ego_pose record (sensor/ego -> parent)."""
    return transform_matrix(record['translation'], Quaternion(record['rotation']))


def box_to_image_points(corners_cam: np.ndarray, cam2img: np.ndarray,
                        near: float = NEAR_PLANE):
    """Pixel coordinates (k, 2) of the vertices of the part of a box in front of a camera.

    ``corners_cam`` (3, 8) are the box corners in the camera frame. The box is cut by the plane
    z = ``near`` first (projecting corners behind the camera would flip them), so the convex
    hull of the returned points is the box's true silhouette. None if all of it is behind.
    """
    depth = corners_cam[2]
    front = depth >= near
    if not front.any():
        return None
    points = [corners_cam[:, front]]
    # Crossings of every front/behind corner pair with the near plane: the clipped box's new
    # vertices are among them, the others lie inside it and leave the hull unchanged.
    i, j = np.nonzero(front[:, None] & ~front[None, :])
    if len(i):
        t = (near - depth[i]) / (depth[j] - depth[i])
        points.append(corners_cam[:, i] + t * (corners_cam[:, j] - corners_cam[:, i]))
    return view_points(np.concatenate(points, axis=1), cam2img, normalize=True)[:2].T


def clipped_hull_bbox(points: np.ndarray, width: int, height: int):
    """[x1, y1, x2, y2] of the convex hull of ``points`` cut to the image, or None if outside."""
    visible = MultiPoint(points.tolist()).convex_hull.intersection(
        shapely_box(0, 0, width, height))
    if visible.is_empty:
        return None
    return [float(v) for v in visible.bounds]


def _check_inputs(root_path: str, version: str) -> None:
    if version not in VERSION_SPLITS:
        raise ValueError(f'unknown nuScenes version {version!r}; allowed: '
                         f'{", ".join(VERSION_SPLITS)}')
    if not osp.isdir(root_path):
        raise FileNotFoundError(f'nuScenes root path {root_path!r} does not exist')
    table_dir = osp.join(root_path, version)
    if not osp.isdir(table_dir):
        raise FileNotFoundError(f'nuScenes version folder {table_dir!r} does not exist '
                                f'(expected the {version} tables under the root path)')


def _scene_samples(nusc: NuScenes, scene: dict) -> list:
    """The key frames of a scene in time order, following the ``next`` links."""
    samples, token = [], scene['first_sample_token']
    while token:
        sample = nusc.get('sample', token)
        samples.append(sample)
        token = sample['next']
    return samples


def _split_samples(nusc: NuScenes, scene_names: list) -> list:
    """Samples of the named scenes that are on disk, sorted by scene name then timestamp."""
    wanted = set(scene_names)
    scenes = sorted((s for s in nusc.scene if s['name'] in wanted), key=lambda s: s['name'])
    available, missing = [], []
    for scene in scenes:
        first = nusc.get('sample', scene['first_sample_token'])
        lidar_path = nusc.get_sample_data_path(first['data'][LIDAR])
        (available if osp.isfile(lidar_path) else missing).append(scene)
    if missing:
        # Like mmdet3d: partial downloads of trainval are usable; say what was left out.
        warnings.warn(f'{len(missing)} scene(s) have no LiDAR file on disk and are skipped, '
                      f'e.g. {missing[0]["name"]}')
    return [sample for scene in available for sample in _scene_samples(nusc, scene)]


def _image_info(nusc: NuScenes, sd_token: str, lidar2global: np.ndarray) -> dict:
    sd = nusc.get('sample_data', sd_token)
    calib = nusc.get('calibrated_sensor', sd['calibrated_sensor_token'])
    if len(calib['camera_intrinsic']) != 3:
        raise ValueError(f'calibrated_sensor {calib["token"]!r} of camera sample_data '
                         f'{sd_token!r} has no 3x3 camera_intrinsic: '
                         f'{calib["camera_intrinsic"]!r}')
    cam2ego = pose_matrix(calib)
    # The camera fired at its own time: go through the ego pose of that moment.
    cam2global = pose_matrix(nusc.get('ego_pose', sd['ego_pose_token'])) @ cam2ego
    return dict(
        img_path=osp.basename(sd['filename']),
        cam2img=np.asarray(calib['camera_intrinsic'], dtype=np.float64).tolist(),
        cam2ego=cam2ego.tolist(),
        lidar2cam=(np.linalg.inv(cam2global) @ lidar2global).tolist(),
        sample_data_token=sd_token,
        timestamp=sd['timestamp'] / 1e6,
        height=sd['height'],
        width=sd['width'],
    )


def _instances(nusc: NuScenes, sample: dict, lidar_boxes: list,
               lidar2global: np.ndarray) -> list:
    global2lidar_rot = lidar2global[:3, :3].T
    instances = []
    for ann_token, box in zip(sample['anns'], lidar_boxes):
        ann = nusc.get('sample_annotation', ann_token)
        label = CLASSES.index(CATEGORY_TO_CLASS[box.name]) if box.name in CATEGORY_TO_CLASS \
            else -1
        velocity = global2lidar_rot @ np.append(nusc.box_velocity(ann_token)[:2], 0.0)
        attrs = [nusc.get('attribute', t)['name'] for t in ann['attribute_tokens']]
        instances.append(dict(
            bbox_3d=[*map(float, box.center), *map(float, box.wlh[[1, 0, 2]]),
                     float(box.orientation.yaw_pitch_roll[0])],
            bbox_label=label,
            bbox_label_3d=label,
            bbox_3d_isvalid=bool(ann['num_lidar_pts'] + ann['num_radar_pts'] > 0),
            velocity=velocity[:2].tolist(),  # NaN when the devkit cannot estimate it
            num_lidar_pts=int(ann['num_lidar_pts']),
            num_radar_pts=int(ann['num_radar_pts']),
            attr_label=ATTRIBUTES.index(attrs[0] if attrs else 'None'),
        ))
    return instances


def _cam_instances(image: dict, lidar_boxes: list) -> list:
    """2D boxes of the labelled boxes seen by this camera, selected as StreamPETR's converter
    does: the part of the box in front of the camera, projected and cut to the image, at least
    1 pixel wide and high, with the box centre in front of the camera. The centre's projection
    (``center_2d``) may lie outside the image (a box cut by the image border); the image
    augmentation clips it."""
    lidar2cam = np.asarray(image['lidar2cam'])
    cam2img = np.asarray(image['cam2img'])
    width, height = image['width'], image['height']
    out = []
    for box in lidar_boxes:
        if box.name not in CATEGORY_TO_CLASS:
            continue
        center = lidar2cam[:3, :3] @ box.center + lidar2cam[:3, 3]
        if center[2] <= 0:
            continue
        corners = lidar2cam[:3, :3] @ box.corners() + lidar2cam[:3, 3:4]
        points = box_to_image_points(corners, cam2img)
        bbox = None if points is None else clipped_hull_bbox(points, width, height)
        if bbox is None or bbox[2] - bbox[0] < 1 or bbox[3] - bbox[1] < 1:
            continue
        u, v = view_points(center[:, None], cam2img, normalize=True)[:2, 0]
        out.append(dict(bbox=bbox,
                        bbox_label=CLASSES.index(CATEGORY_TO_CLASS[box.name]),
                        center_2d=[float(u), float(v)],
                        depth=float(center[2])))
    return out


def sample_info(nusc: NuScenes, sample: dict, sample_idx: int) -> dict:
    """The v2 info item of one key frame."""
    lidar_token = sample['data'][LIDAR]
    lidar_sd = nusc.get('sample_data', lidar_token)
    lidar2ego = pose_matrix(nusc.get('calibrated_sensor', lidar_sd['calibrated_sensor_token']))
    ego2global = pose_matrix(nusc.get('ego_pose', lidar_sd['ego_pose_token']))
    lidar2global = ego2global @ lidar2ego
    images = {cam: _image_info(nusc, sample['data'][cam], lidar2global) for cam in CAMERAS}
    # The devkit's boxes moved into the LiDAR frame of this key frame, in sample['anns'] order.
    _, lidar_boxes, _ = nusc.get_sample_data(lidar_token)
    return dict(
        sample_idx=sample_idx,
        token=sample['token'],
        scene_token=sample['scene_token'],
        prev=sample['prev'],
        next=sample['next'],
        timestamp=sample['timestamp'] / 1e6,  # python float = float64 seconds
        ego2global=ego2global.tolist(),
        lidar_points=dict(lidar_path=osp.basename(lidar_sd['filename']), num_pts_feats=5,
                          lidar2ego=lidar2ego.tolist(), sample_data_token=lidar_token),
        images=images,
        instances=_instances(nusc, sample, lidar_boxes, lidar2global),
        cam_instances={cam: _cam_instances(images[cam], lidar_boxes) for cam in CAMERAS},
    )


def _metainfo(nusc: NuScenes, version: str, samples: list) -> dict:
    categories = {name: i for i, name in enumerate(CLASSES)}
    # Like mmdet3d, list the categories that are kept with label -1.
    ignored = {nusc.get('sample_annotation', token)['category_name']
               for sample in samples for token in sample['anns']} - CATEGORY_TO_CLASS.keys()
    categories.update({name: -1 for name in sorted(ignored)})
    return dict(categories=categories, dataset='nuscenes', version=version, info_version='1.1')


def _dump_all_or_nothing(payloads: dict, out_dir: str) -> None:
    """Write every pickle to a temp file first, then rename them all into place."""
    os.makedirs(out_dir, exist_ok=True)
    staged = []
    try:
        for path, payload in payloads.items():
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f'.{osp.basename(path)}.',
                                       suffix='.tmp')
            os.close(fd)
            staged.append((tmp, path))
            mmengine.dump(payload, tmp, file_format='pkl')
            os.chmod(tmp, 0o644)  # mkstemp makes it private
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            if osp.exists(tmp):
                os.remove(tmp)


def create_nuscenes_infos(root_path: str, version: str, out_dir: str,
                          extra_tag: str = 'nuscenes', progress: bool = True) -> dict:
    """Write ``{extra_tag}_infos_{split}.pkl`` for every split of ``version``.

    Returns {split: path}. Nothing is written unless every split converted.
    """
    _check_inputs(root_path, version)
    nusc = NuScenes(version=version, dataroot=root_path, verbose=False)
    scene_splits = create_splits_scenes()
    payloads, paths = {}, {}
    for split, devkit_split in VERSION_SPLITS[version].items():
        samples = _split_samples(nusc, scene_splits[devkit_split])
        if not samples:
            warnings.warn(f'nuScenes {version} at {root_path}: split {split!r} (the devkit\'s '
                          f'{devkit_split!r} scenes) has 0 samples; its info file is written '
                          'empty')
        data_list = [sample_info(nusc, sample, idx) for idx, sample in enumerate(
            tqdm(samples, desc=f'nuScenes {version} {split}', unit='sample',
                 disable=not progress))]
        path = osp.join(out_dir, f'{extra_tag}_infos_{split}.pkl')
        payloads[path] = dict(metainfo=_metainfo(nusc, version, samples), data_list=data_list)
        paths[split] = path
    _dump_all_or_nothing(payloads, out_dir)
    return paths
