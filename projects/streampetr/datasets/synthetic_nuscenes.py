"""A small synthetic dataset in the real nuScenes table format (``v1.0-mini``).

It holds every table the nuscenes-devkit loads, real mini scene names, key frames at 2 Hz, a
nuScenes-like car (six cameras, a LIDAR_TOP rotated -90 deg about z) driving a smooth path, and
objects of every detection class moving at constant velocity. Each camera image shows the
annotated boxes as filled silhouettes in a class colour (the front face brighter, so heading is
visible) over a plain background, so a camera detector can learn them; the LiDAR sweep has points
on the ground and on the boxes. Same seed, same bytes.
"""
import hashlib
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
from nuscenes.eval.detection.config import config_factory
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box, transform_matrix, view_points
from pyquaternion import Quaternion
from shapely.geometry import MultiPoint, box as shapely_box
from tqdm import tqdm

from .nuscenes_converter import CAMERAS, LIDAR, NEAR_PLANE, box_to_image_points

VERSION = 'v1.0-mini'
# Real mini scenes, ordered so that the first two are one mini_train and one mini_val scene.
SCENES = (('scene-0061', 'singapore-onenorth'), ('scene-0103', 'boston-seaport'),
          ('scene-0553', 'boston-seaport'), ('scene-0655', 'boston-seaport'),
          ('scene-0757', 'boston-seaport'), ('scene-0796', 'singapore-queenstown'),
          ('scene-0916', 'singapore-queenstown'), ('scene-1077', 'singapore-hollandvillage'),
          ('scene-1094', 'singapore-hollandvillage'), ('scene-1100', 'singapore-hollandvillage'))
FIRST_TIMESTAMP_US = 1532402927647951  # 2018-07-24, the first key frame of scene-0061
KEYFRAME_PERIOD_S = 0.5
FULL_IMAGE_SIZE = (1600, 900)
MAP_RESOLUTION = 0.1  # metres per pixel of the map masks, as the devkit expects
MAP_MARGIN_M = 80.0  # free map around the ego path (objects are at most 50 m away)
BACKGROUND_RGB = (110, 110, 110)

# Every lidarseg-era category with its index; only some carry objects here.
CATEGORIES = (
    'noise', 'animal', 'human.pedestrian.adult', 'human.pedestrian.child',
    'human.pedestrian.construction_worker', 'human.pedestrian.personal_mobility',
    'human.pedestrian.police_officer', 'human.pedestrian.stroller',
    'human.pedestrian.wheelchair', 'movable_object.barrier', 'movable_object.debris',
    'movable_object.pushable_pullable', 'movable_object.trafficcone',
    'static_object.bicycle_rack', 'vehicle.bicycle', 'vehicle.bus.bendy', 'vehicle.bus.rigid',
    'vehicle.car', 'vehicle.construction', 'vehicle.emergency.ambulance',
    'vehicle.emergency.police', 'vehicle.motorcycle', 'vehicle.trailer', 'vehicle.truck',
    'flat.driveable_surface', 'flat.other', 'flat.sidewalk', 'flat.terrain', 'static.manmade',
    'static.other', 'static.vegetation', 'vehicle.ego')
ATTRIBUTES = {
    'vehicle.moving': 'Vehicle is moving.',
    'vehicle.stopped': 'Vehicle, with a driver/rider in/on it, is currently stationary.',
    'vehicle.parked': 'Vehicle is stationary (usually for longer duration) with no immediate '
                      'intent to move.',
    'cycle.with_rider': 'There is a rider on the bicycle or motorcycle.',
    'cycle.without_rider': 'There is NO rider on the bicycle or motorcycle.',
    'pedestrian.sitting_lying_down': 'The human is sitting or lying down.',
    'pedestrian.standing': 'The human is standing.',
    'pedestrian.moving': 'The human is moving.',
}
# (token, level, upper bound of the visible fraction)
VISIBILITIES = (('1', 'v0-40', 0.4), ('2', 'v40-60', 0.6), ('3', 'v60-80', 0.8),
                ('4', 'v80-100', 1.01))


@dataclass(frozen=True)
class ObjectClass:
    """How objects of one class look and move."""
    categories: tuple  # ((nuScenes category, weight), ...)
    size_wlh: tuple  # mean width, length, height in metres
    moving_prob: float
    speed: tuple  # (min, max) m/s when moving
    rgb: tuple
    static_attribute: str = ''
    moving_attribute: str = ''
    range_m: float = 40.0  # annotated up to this distance from the ego
    extra_weight: float = 1.0  # how often it is drawn for the extra objects of a scene


_RANGES = config_factory('detection_cvpr_2019').class_range
OBJECT_CLASSES = {
    'car': ObjectClass((('vehicle.car', 1.0),), (1.95, 4.62, 1.73), 0.5, (2, 10), (220, 40, 40),
                       'vehicle.parked', 'vehicle.moving', _RANGES['car'], 6),
    'truck': ObjectClass((('vehicle.truck', 1.0),), (2.51, 6.93, 2.84), 0.4, (2, 8),
                         (40, 160, 40), 'vehicle.parked', 'vehicle.moving', _RANGES['truck'], 1.5),
    'bus': ObjectClass((('vehicle.bus.rigid', 0.8), ('vehicle.bus.bendy', 0.2)),
                       (2.94, 11.19, 3.47), 0.5, (2, 8), (40, 80, 220), 'vehicle.stopped',
                       'vehicle.moving', _RANGES['bus']),
    'trailer': ObjectClass((('vehicle.trailer', 1.0),), (2.90, 12.28, 3.87), 0.3, (2, 6),
                           (230, 200, 30), 'vehicle.parked', 'vehicle.moving', _RANGES['trailer']),
    'construction_vehicle': ObjectClass((('vehicle.construction', 1.0),), (2.85, 6.37, 3.19), 0.3,
                                        (1, 3), (230, 120, 20), 'vehicle.parked', 'vehicle.moving',
                                        _RANGES['construction_vehicle']),
    'pedestrian': ObjectClass((('human.pedestrian.adult', 0.7), ('human.pedestrian.child', 0.1),
                               ('human.pedestrian.construction_worker', 0.1),
                               ('human.pedestrian.police_officer', 0.1)),
                              (0.67, 0.73, 1.77), 0.6, (0.8, 1.8), (200, 40, 200),
                              'pedestrian.standing', 'pedestrian.moving', _RANGES['pedestrian'], 4),
    'motorcycle': ObjectClass((('vehicle.motorcycle', 1.0),), (0.77, 2.11, 1.47), 0.5, (2, 8),
                              (30, 200, 200), 'cycle.without_rider', 'cycle.with_rider',
                              _RANGES['motorcycle']),
    'bicycle': ObjectClass((('vehicle.bicycle', 1.0),), (0.60, 1.70, 1.28), 0.5, (1.5, 5),
                           (130, 60, 20), 'cycle.without_rider', 'cycle.with_rider',
                           _RANGES['bicycle']),
    'traffic_cone': ObjectClass((('movable_object.trafficcone', 1.0),), (0.41, 0.41, 1.07), 0.0,
                                (0, 0), (255, 140, 180), range_m=_RANGES['traffic_cone'],
                                extra_weight=2),
    'barrier': ObjectClass((('movable_object.barrier', 1.0),), (2.53, 0.50, 0.98), 0.0, (0, 0),
                           (250, 250, 250), range_m=_RANGES['barrier'], extra_weight=2),
    # Not a detection class: converted with label -1, drawn in a dull colour.
    'pushable_pullable': ObjectClass((('movable_object.pushable_pullable', 1.0),),
                                     (0.62, 0.71, 1.05), 0.0, (0, 0), (60, 60, 60),
                                     extra_weight=0),
}


@dataclass(frozen=True)
class CameraSpec:
    channel: str
    yaw_deg: float  # optical axis direction in the ego frame (0 = forward, + = left)
    translation: tuple  # in the ego frame, metres
    focal: float  # pixels at 1600x900
    principal: tuple  # pixels at 1600x900
    time_offset_ms: float  # when it fires relative to the LiDAR key frame


CAMERA_SPECS = (
    CameraSpec('CAM_FRONT', 0.0, (1.700, 0.016, 1.511), 1266.4, (816.3, 491.5), 12.0),
    CameraSpec('CAM_FRONT_RIGHT', -55.0, (1.551, -0.493, 1.496), 1260.8, (808.0, 495.3), 20.0),
    CameraSpec('CAM_FRONT_LEFT', 55.0, (1.524, 0.495, 1.509), 1272.6, (826.6, 479.8), 4.0),
    CameraSpec('CAM_BACK', 180.0, (0.028, 0.003, 1.579), 809.2, (829.2, 481.8), -37.0),
    CameraSpec('CAM_BACK_LEFT', 110.0, (1.036, 0.485, 1.591), 1256.7, (792.1, 492.8), -12.0),
    CameraSpec('CAM_BACK_RIGHT', -110.0, (1.015, -0.481, 1.562), 1259.5, (807.3, 501.2), -29.0),
)
assert tuple(c.channel for c in CAMERA_SPECS) == CAMERAS
# Camera axes (x right, y down, z forward) in the ego frame (x forward, y left, z up).
CAM_AXES_IN_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
# LiDAR: x right, y forward, z up (yaw -90 deg), kept level so boxes keep a pure yaw.
LIDAR_TRANSLATION = (0.986, 0.0, 1.840)
LIDAR_ROTATION = Quaternion(axis=(0.0, 0.0, 1.0), angle=-math.pi / 2)
LIDAR_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)  # a 32-beam spinning LiDAR
LIDAR_AZIMUTHS = 360  # points per ring on the ground


def _token(seed: int, *parts) -> str:
    """A 32-hex-digit token like nuScenes', fixed by the seed and what it names."""
    key = '/'.join(map(str, (seed, *parts))).encode()
    return hashlib.md5(key, usedforsecurity=False).hexdigest()


def _yaw_quaternion(yaw: float) -> Quaternion:
    return Quaternion(axis=(0.0, 0.0, 1.0), angle=yaw)


def _moved(box: Box, matrix: np.ndarray) -> Box:
    """A copy of ``box`` moved by a 4x4 rigid transform."""
    out = box.copy()
    out.rotate(Quaternion(matrix=matrix[:3, :3], atol=1e-6))
    out.translate(matrix[:3, 3])
    return out


class EgoPath:
    """A smooth drive: slowly varying speed (1.5-8.5 m/s) and heading, level, on z = 0."""

    def __init__(self, rng: np.random.Generator, duration_s: float):
        self.t = np.arange(-0.2, duration_s + 0.2, 0.01)
        speed = rng.uniform(3.0, 7.0) + rng.uniform(0.0, 1.5) * np.sin(
            rng.uniform(0.2, 0.6) * self.t + rng.uniform(0.0, 2 * np.pi))
        self.heading = rng.uniform(0.0, np.pi / 2) + rng.uniform(0.0, 0.3) * np.sin(
            rng.uniform(0.1, 0.3) * self.t + rng.uniform(0.0, 2 * np.pi))
        steps = np.stack([np.cos(self.heading), np.sin(self.heading)], 1) * speed[:, None] * 0.01
        xy = np.concatenate([np.zeros((1, 2)), np.cumsum(steps[:-1], axis=0)])
        # Global coordinates stay positive with free map all around the path.
        self.xy = xy + MAP_MARGIN_M - xy.min(axis=0)

    def position(self, t: float) -> np.ndarray:
        return np.array([np.interp(t, self.t, self.xy[:, 0]),
                         np.interp(t, self.t, self.xy[:, 1]), 0.0])

    def ego2global(self, t: float) -> np.ndarray:
        return transform_matrix(self.position(t),
                                _yaw_quaternion(float(np.interp(t, self.t, self.heading))))

    def pose_record(self, token: str, t: float, timestamp: int) -> dict:
        pose = self.ego2global(t)
        return dict(token=token, timestamp=timestamp,
                    rotation=list(Quaternion(matrix=pose[:3, :3]).elements),
                    translation=pose[:3, 3].tolist())


@dataclass
class Track:
    """One object: constant velocity on the ground, annotated at ``samples``."""
    token: str
    class_name: str
    category: str
    wlh: np.ndarray
    xy_ref: np.ndarray
    t_ref: float
    velocity: np.ndarray
    yaw: float
    attribute: str
    samples: list = field(default_factory=list)

    @property
    def radius(self) -> float:
        return float(np.hypot(self.wlh[0], self.wlh[1]) / 2)

    def xy(self, t: float) -> np.ndarray:
        return self.xy_ref + self.velocity * (t - self.t_ref)

    def box(self, t: float) -> Box:
        center = [*self.xy(t), self.wlh[2] / 2]
        return Box(center, self.wlh.tolist(), _yaw_quaternion(self.yaw), name=self.category)


def _camera_calibration(rng: np.random.Generator, spec: CameraSpec,
                        image_size: tuple) -> tuple:
    """(translation, rotation quaternion, 3x3 intrinsic) with a small per-log wobble."""
    yaw = math.radians(spec.yaw_deg + rng.normal(0.0, 0.2))
    pitch = math.radians(rng.uniform(-0.5, 0.5))
    rotation = (Quaternion(axis=(0, 0, 1), angle=yaw).rotation_matrix @ CAM_AXES_IN_EGO
                @ Quaternion(axis=(1, 0, 0), angle=pitch).rotation_matrix)
    translation = np.asarray(spec.translation) + rng.normal(0.0, 0.005, 3)
    sx, sy = image_size[0] / FULL_IMAGE_SIZE[0], image_size[1] / FULL_IMAGE_SIZE[1]
    focal = spec.focal * (1.0 + rng.normal(0.0, 0.003))
    intrinsic = np.array([[focal * sx, 0.0, spec.principal[0] * sx],
                          [0.0, focal * sy, spec.principal[1] * sy], [0.0, 0.0, 1.0]])
    return translation, Quaternion(matrix=rotation), intrinsic


def _annotated_run(track: Track, ego: EgoPath, times: np.ndarray, k_ref: int,
                   range_m: float) -> list:
    """The contiguous key frames around ``k_ref`` where the object is in range and clear of
    the ego car."""
    def ok(k):
        dist = np.linalg.norm(track.xy(times[k]) - ego.position(times[k])[:2])
        return track.radius + 2.5 <= dist <= range_m - 3.0

    if not ok(k_ref):
        return []
    lo, hi = k_ref, k_ref
    while lo > 0 and ok(lo - 1):
        lo -= 1
    while hi < len(times) - 1 and ok(hi + 1):
        hi += 1
    return list(range(lo, hi + 1))


def _place_track(rng: np.random.Generator, token: str, class_name: str, ego: EgoPath,
                 times: np.ndarray, placed: list, max_range_m: float) -> Track:
    """Draw an object until it is in range at two or more key frames and overlaps nothing."""
    spec = OBJECT_CLASSES[class_name]
    range_m = min(spec.range_m, max_range_m)
    names, weights = zip(*spec.categories)
    for _ in range(500):
        category = names[rng.choice(len(names), p=np.asarray(weights) / sum(weights))]
        wlh = np.asarray(spec.size_wlh) * rng.uniform(0.9, 1.1, 3)
        k_ref = int(rng.integers(len(times)))
        radius = float(np.hypot(wlh[0], wlh[1]) / 2)
        dist, bearing = rng.uniform(radius + 3.5, range_m - 8.0), rng.uniform(-np.pi, np.pi)
        yaw = rng.uniform(-np.pi, np.pi)
        moving = rng.random() < spec.moving_prob
        speed = rng.uniform(*spec.speed) if moving else 0.0
        track = Track(token, class_name, category, wlh,
                      ego.position(times[k_ref])[:2] + dist * np.array([np.cos(bearing),
                                                                        np.sin(bearing)]),
                      float(times[k_ref]), speed * np.array([np.cos(yaw), np.sin(yaw)]), yaw,
                      spec.moving_attribute if moving else spec.static_attribute)
        track.samples = _annotated_run(track, ego, times, k_ref, range_m)
        if len(track.samples) < 2:
            continue
        clear = all(np.linalg.norm(track.xy(times[k]) - other.xy(times[k]))
                    > track.radius + other.radius + 0.3
                    for other in placed for k in set(track.samples) & set(other.samples))
        if clear:
            return track
    raise RuntimeError(f'could not place a {class_name} clear of the other objects')


def _render_camera(boxes: list, rgbs: list, global2cam: np.ndarray, intrinsic: np.ndarray,
                   image_size: tuple) -> tuple:
    """Draw the boxes far to near; returns the RGB image and, per box, the pixels it shows and
    the pixels its silhouette covers in the image."""
    width, height = image_size
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND_RGB
    ids = np.zeros((height, width), np.uint16)
    area = np.zeros(len(boxes))
    shift, scale = 4, 16.0  # sub-pixel polygon coordinates for cv2
    outline = max(1, width // 800)
    image_box = shapely_box(0, 0, width, height)
    view_box = shapely_box(-2, -2, width + 2, height + 2)  # cv2 gets bounded coordinates

    def pixels(points):
        polygon = MultiPoint(points.tolist()).convex_hull.intersection(view_box)
        if polygon.geom_type != 'Polygon' or polygon.area == 0:
            return None, 0.0
        return (np.round(np.asarray(polygon.exterior.coords) * scale).astype(np.int32),
                polygon.intersection(image_box).area)

    drawn = []
    for idx, box in enumerate(boxes):
        cam_box = _moved(box, global2cam)
        corners = cam_box.corners()
        points = box_to_image_points(corners, intrinsic)
        if points is None:
            continue
        silhouette, area[idx] = pixels(points)
        if silhouette is None or area[idx] == 0:
            continue
        front = None
        front_corners = corners[:, :4]
        normal = cam_box.orientation.rotation_matrix[:, 0]
        if (front_corners[2] >= NEAR_PLANE).all() and normal @ front_corners.mean(1) < 0:
            front, _ = pixels(view_points(front_corners, intrinsic, normalize=True)[:2].T)
        drawn.append((np.linalg.norm(cam_box.center), idx, silhouette, front))
    for _, idx, silhouette, front in sorted(drawn, key=lambda d: -d[0]):
        rgb = np.asarray(rgbs[idx], dtype=np.float64)
        cv2.fillConvexPoly(image, silhouette, (rgb * 0.7).tolist(), shift=shift)
        cv2.fillConvexPoly(ids, silhouette, idx + 1, shift=shift)
        if front is not None:
            cv2.fillConvexPoly(image, front, rgb.tolist(), shift=shift)
        cv2.polylines(image, [silhouette], True, (rgb * 0.35).tolist(), outline, shift=shift)
    shown = np.bincount(ids.ravel(), minlength=len(boxes) + 1)[1:]
    return image, shown, area


def _lidar_sweep(rng: np.random.Generator, boxes: list) -> np.ndarray:
    """(N, 5) float32 points (x, y, z, intensity, ring) in the LiDAR frame: rings on the ground
    and points on the faces of the boxes (given in the LiDAR frame) that face the sensor."""
    height = LIDAR_TRANSLATION[2]
    ground = []
    for elevation in np.radians(LIDAR_ELEVATIONS_DEG[LIDAR_ELEVATIONS_DEG < -1.0]):
        dist = height / math.tan(-elevation)
        if dist > 70.0:
            continue
        azimuth = np.linspace(0, 2 * np.pi, LIDAR_AZIMUTHS, endpoint=False) + rng.uniform(0, 1)
        dist = dist + rng.normal(0.0, 0.03, LIDAR_AZIMUTHS)
        ground.append(np.stack([dist * np.cos(azimuth), dist * np.sin(azimuth),
                                np.full_like(dist, -height)], 1))
    ground = np.concatenate(ground)
    for box in boxes:  # the ground under an object is hidden by it
        ground = ground[~points_in_box(box, ground.T, wlh_factor=1.1)]
    parts = [np.column_stack([ground, rng.uniform(1, 15, len(ground))])]
    for box in boxes:
        rotation = box.orientation.rotation_matrix
        half = box.wlh[[1, 0, 2]] / 2  # box frame: x along the length
        faces = []
        for axis, sign in ((0, 1), (0, -1), (1, 1), (1, -1), (2, 1)):  # no bottom face
            normal = np.zeros(3)
            normal[axis] = sign
            if (rotation @ normal) @ (box.center + rotation @ (normal * half)) >= 0:
                continue  # faces away from the sensor
            others = [a for a in range(3) if a != axis]
            faces.append((normal, others, 4 * half[others[0]] * half[others[1]]))
        total_area = sum(f[2] for f in faces)
        count = int(np.clip(2500 * total_area / max(box.center @ box.center, 1.0), 4, 400))
        for normal, others, face_area in faces:
            n = max(1, round(count * face_area / total_area))
            local = np.tile(normal * half * 0.98, (n, 1))
            for a in others:
                local[:, a] = rng.uniform(-0.98, 0.98, n) * half[a]
            parts.append(np.column_stack([box.center + local @ rotation.T,
                                          rng.uniform(15, 90, n)]))
    points = np.concatenate(parts)
    elevation = np.degrees(np.arctan2(points[:, 2], np.hypot(points[:, 0], points[:, 1])))
    step = (LIDAR_ELEVATIONS_DEG[-1] - LIDAR_ELEVATIONS_DEG[0]) / 31
    ring = np.clip(np.round((elevation - LIDAR_ELEVATIONS_DEG[0]) / step), 0, 31)
    return np.column_stack([points, ring]).astype(np.float32)


def _log_record(token: str, location: str, first_timestamp_us: int) -> dict:
    vehicle, utc_offset = ('n008', -4) if location.startswith('boston') else ('n015', 8)
    local = datetime.fromtimestamp(first_timestamp_us / 1e6, timezone(timedelta(hours=utc_offset)))
    logfile = f'{vehicle}-{local:%Y-%m-%d-%H-%M-%S}{utc_offset * 100:+05d}'
    return dict(token=token, logfile=logfile, vehicle=vehicle,
                date_captured=f'{local:%Y-%m-%d}', location=location)


class _Writer:
    """Builds the tables and files of the dataset under ``root``."""

    def __init__(self, root: Path, seed: int, image_size: tuple, max_range_m: float):
        self.root, self.seed, self.image_size = root, seed, image_size
        self.max_range_m = max_range_m
        self.tables = {name: [] for name in (
            'attribute', 'calibrated_sensor', 'category', 'ego_pose', 'instance', 'log', 'map',
            'sample', 'sample_annotation', 'sample_data', 'scene', 'sensor', 'visibility')}
        self.tables['category'] = [
            dict(token=self.token('category', name), name=name, index=i,
                 description=f'nuScenes category {name}.') for i, name in enumerate(CATEGORIES)]
        self.tables['attribute'] = [dict(token=self.token('attribute', name), name=name,
                                         description=text) for name, text in ATTRIBUTES.items()]
        self.tables['visibility'] = [
            dict(token=token, level=level, description='visibility of whole object is between '
                 f'{level[1:].replace("-", " and ")}%')
            for token, level, _ in VISIBILITIES]
        self.tables['sensor'] = [
            dict(token=self.token('sensor', channel), channel=channel,
                 modality='lidar' if channel == LIDAR else 'camera')
            for channel in (*CAMERAS, LIDAR)]
        for channel in (*CAMERAS, LIDAR):
            (root / 'samples' / channel).mkdir(parents=True)
        (root / 'maps').mkdir()
        self.map_paths = {}  # location -> list of ego paths drawn on its map

    def token(self, *parts) -> str:
        return _token(self.seed, *parts)

    def add_scene(self, index: int, num_samples: int, bar: tqdm) -> None:
        name, location = SCENES[index]
        rng = np.random.default_rng([self.seed, index])
        first_us = FIRST_TIMESTAMP_US + index * 2 * 86_400_000_000 + int(rng.integers(10**9))
        times = KEYFRAME_PERIOD_S * np.arange(num_samples)
        times[1:] += rng.uniform(-0.01, 0.01, num_samples - 1)
        ego = EgoPath(rng, float(times[-1]))
        self.map_paths.setdefault(location, []).append(ego)
        log = _log_record(self.token('log', name), location, first_us)
        self.tables['log'].append(log)
        scene_token = self.token('scene', name)
        calib = {spec.channel: _camera_calibration(rng, spec, self.image_size)
                 for spec in CAMERA_SPECS}
        for channel in (*CAMERAS, LIDAR):
            translation, rotation, intrinsic = calib.get(
                channel, (np.asarray(LIDAR_TRANSLATION), LIDAR_ROTATION, None))
            self.tables['calibrated_sensor'].append(dict(
                token=self.token('calibrated_sensor', name, channel),
                sensor_token=self.token('sensor', channel), translation=translation.tolist(),
                rotation=list(rotation.elements),
                camera_intrinsic=[] if intrinsic is None else intrinsic.tolist()))

        plan = list(OBJECT_CLASSES)  # every class at least once
        extra = [c for c, s in OBJECT_CLASSES.items() if s.extra_weight > 0]
        weights = np.array([OBJECT_CLASSES[c].extra_weight for c in extra])
        plan += [str(c) for c in rng.choice(extra, size=int(rng.integers(6, 13)),
                                           p=weights / weights.sum())]
        tracks = []
        for i, class_name in enumerate(plan):
            tracks.append(_place_track(rng, self.token('instance', name, i), class_name, ego,
                                       times, tracks, self.max_range_m))

        sample_tokens = [self.token('sample', name, k) for k in range(num_samples)]
        for k, sample_token in enumerate(sample_tokens):
            self.tables['sample'].append(dict(
                token=sample_token, timestamp=first_us + round(times[k] * 1e6),
                prev=sample_tokens[k - 1] if k > 0 else '',
                next=sample_tokens[k + 1] if k + 1 < num_samples else '',
                scene_token=scene_token))
            self._add_key_frame(rng, name, log, k, sample_token, first_us, times,
                                ego, calib, tracks)
            bar.update()
        self._add_instances(name, tracks, num_samples)
        self.tables['scene'].append(dict(
            token=scene_token, log_token=log['token'], nbr_samples=num_samples,
            first_sample_token=sample_tokens[0], last_sample_token=sample_tokens[-1], name=name,
            description=f'Synthetic drive in {location} with {len(tracks)} objects.'))

    def _add_sample_data(self, scene: str, log: dict, channel: str, k: int, num_samples: int,
                         sample_token: str, timestamp: int, ego: EgoPath, t: float) -> dict:
        """sample_data and ego_pose records of one sensor at one key frame; returns the former."""
        token = self.token('sample_data', scene, channel, k)
        pose_token = self.token('ego_pose', scene, channel, k)
        self.tables['ego_pose'].append(ego.pose_record(pose_token, t, timestamp))
        is_camera = channel != LIDAR
        extension = 'jpg' if is_camera else 'pcd.bin'
        record = dict(
            token=token, sample_token=sample_token, ego_pose_token=pose_token,
            calibrated_sensor_token=self.token('calibrated_sensor', scene, channel),
            timestamp=timestamp, fileformat='jpg' if is_camera else 'pcd', is_key_frame=True,
            height=self.image_size[1] if is_camera else 0,
            width=self.image_size[0] if is_camera else 0,
            filename=f'samples/{channel}/{log["logfile"]}__{channel}__{timestamp}.{extension}',
            prev=self.token('sample_data', scene, channel, k - 1) if k > 0 else '',
            next=self.token('sample_data', scene, channel, k + 1) if k + 1 < num_samples else '')
        self.tables['sample_data'].append(record)
        return record

    def _add_key_frame(self, rng, scene, log, k, sample_token, first_us, times, ego, calib,
                       tracks) -> None:
        num_samples = len(times)
        present = [track for track in tracks if k in track.samples]
        boxes = [track.box(times[k]) for track in present]
        rgbs = [OBJECT_CLASSES[track.class_name].rgb for track in present]
        shown, covered = np.zeros(len(boxes)), np.zeros(len(boxes))
        for spec in CAMERA_SPECS:
            t = times[k] + spec.time_offset_ms / 1000
            record = self._add_sample_data(scene, log, spec.channel, k, num_samples,
                                           sample_token, first_us + round(t * 1e6), ego, t)
            translation, rotation, intrinsic = calib[spec.channel]
            cam2global = ego.ego2global(t) @ transform_matrix(translation, rotation)
            image, cam_shown, cam_covered = _render_camera(
                boxes, rgbs, np.linalg.inv(cam2global), intrinsic, self.image_size)
            shown, covered = shown + cam_shown, covered + cam_covered
            cv2.imwrite(str(self.root / record['filename']), image[:, :, ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 92])

        t = float(times[k])
        record = self._add_sample_data(scene, log, LIDAR, k, num_samples, sample_token,
                                       first_us + round(t * 1e6), ego, t)
        lidar2global = ego.ego2global(t) @ transform_matrix(LIDAR_TRANSLATION, LIDAR_ROTATION)
        lidar_boxes = [_moved(box, np.linalg.inv(lidar2global)) for box in boxes]
        points = _lidar_sweep(rng, lidar_boxes)
        points.tofile(self.root / record['filename'])
        xyz = points[:, :3].T.astype(np.float64)

        for track, box, lidar_box, seen, area in zip(present, boxes, lidar_boxes, shown, covered):
            visible = min(1.0, seen / area) if area > 0 else 0.0  # rasterising adds edges
            visibility = next(token for token, _, upper in VISIBILITIES if visible < upper)
            ann_index = track.samples.index(k)
            self.tables['sample_annotation'].append(dict(
                token=self.token('sample_annotation', track.token, k),
                sample_token=sample_token, instance_token=track.token,
                visibility_token=visibility,
                attribute_tokens=[self.token('attribute', track.attribute)]
                if track.attribute else [],
                translation=box.center.tolist(), size=box.wlh.tolist(),
                rotation=list(box.orientation.elements),
                prev=self.token('sample_annotation', track.token, k - 1) if ann_index > 0 else '',
                next=self.token('sample_annotation', track.token, k + 1)
                if ann_index + 1 < len(track.samples) else '',
                num_lidar_pts=int(points_in_box(lidar_box, xyz).sum()), num_radar_pts=0))

    def _add_instances(self, scene: str, tracks: list, num_samples: int) -> None:
        for track in tracks:
            self.tables['instance'].append(dict(
                token=track.token, category_token=self.token('category', track.category),
                nbr_annotations=len(track.samples),
                first_annotation_token=self.token('sample_annotation', track.token,
                                                  track.samples[0]),
                last_annotation_token=self.token('sample_annotation', track.token,
                                                 track.samples[-1])))

    def finish(self) -> None:
        """Draw one map mask per location (the roads driven there) and write the tables."""
        for location, paths in self.map_paths.items():
            token = self.token('map', location)
            extent = np.max([path.xy.max(axis=0) for path in paths], axis=0) + MAP_MARGIN_M
            width, height = np.ceil(extent / MAP_RESOLUTION).astype(int)
            mask = np.zeros((height, width), np.uint8)
            for path in paths:  # the devkit's map pixels: x / res, height - y / res
                pixels = np.column_stack([path.xy[:, 0] / MAP_RESOLUTION,
                                          height - path.xy[:, 1] / MAP_RESOLUTION])
                cv2.polylines(mask, [np.round(pixels).astype(np.int32)], False, 255,
                              int(12 / MAP_RESOLUTION))
            filename = f'maps/{token}.png'
            cv2.imwrite(str(self.root / filename), mask)
            logs = [log['token'] for log in self.tables['log'] if log['location'] == location]
            self.tables['map'].append(dict(token=token, category='semantic_prior',
                                           filename=filename, log_tokens=logs))
        table_dir = self.root / VERSION
        table_dir.mkdir()
        for name, rows in self.tables.items():
            with open(table_dir / f'{name}.json', 'w') as f:
                json.dump(rows, f, indent=1)


# Objects are placed at least this far out (radius + 3.5 m) and at most range - 8 m.
MIN_MAX_RANGE_M = 20.0


def check_arguments(num_scenes: int, num_samples: int, image_size: tuple,
                    max_range_m: float = math.inf) -> None:
    if not 1 <= num_scenes <= len(SCENES):
        raise ValueError(f'--scenes must be 1..{len(SCENES)} (the real mini scene names), '
                         f'got {num_scenes}')
    if num_samples < 2:
        raise ValueError(f'--samples must be >= 2 (velocities need two key frames), '
                         f'got {num_samples}')
    if len(image_size) != 2 or min(image_size) < 32:
        raise ValueError(f'--image-size must be two sizes W H of at least 32 pixels, '
                         f'got {tuple(image_size)}')
    if not max_range_m >= MIN_MAX_RANGE_M:
        raise ValueError(f'--max-range must be at least {MIN_MAX_RANGE_M:g} m, got {max_range_m}')


def make_synthetic_nuscenes(out_dir, num_scenes: int = 2, num_samples: int = 6,
                            image_size: tuple = FULL_IMAGE_SIZE, seed: int = 0,
                            progress: bool = True, max_range_m: float = math.inf) -> Path:
    """Write the dataset to ``out_dir`` (absent or empty) and return its path.

    Objects of each class are annotated up to the devkit's range for that class, or
    ``max_range_m`` if it is nearer (nearer objects are larger in the images: easier to learn).

    It is built in a temporary folder beside ``out_dir`` and renamed into place, so a failure
    leaves nothing behind.
    """
    check_arguments(num_scenes, num_samples, image_size, max_range_m)
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f'output folder {str(out)!r} exists and is not empty; '
                              f'remove it or choose another')
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.partial', dir=out.parent))
    try:
        writer = _Writer(staging, seed, tuple(int(v) for v in image_size), max_range_m)
        with tqdm(total=num_scenes * num_samples, desc='synthetic nuScenes', unit='sample',
                  disable=not progress) as bar:
            for index in range(num_scenes):
                writer.add_scene(index, num_samples, bar)
        writer.finish()
        staging.chmod(0o755)  # mkdtemp makes it private
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
