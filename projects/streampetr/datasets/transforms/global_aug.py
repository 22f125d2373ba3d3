"""Global rotation / scale / translation of the LiDAR frame for camera-only training."""
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS


@TRANSFORMS.register_module()
class StreamGlobalRotScaleTransImage(BaseTransform):
    """Move the LiDAR frame by ``T``: p' = s * Rz(angle) @ p + t, with the angle (radians) from
    ``rot_range``, s from ``scale_ratio_range`` and t ~ N(0, ``translation_std``).

    The 3D boxes (centre, size, yaw, velocity) move with ``T``; every matrix that reads LiDAR
    coordinates is right-multiplied by ``inv(T)`` (``lidar2img``, ``lidar2cam``,
    ``lidar2global``), so the images still see the same world and the memory, aligned through
    ``lidar2global``, stays exact across frames.
    """

    def __init__(self,
                 rot_range=(-0.3925, 0.3925),
                 scale_ratio_range=(0.95, 1.05),
                 translation_std=(0.0, 0.0, 0.0)):
        if len(rot_range) != 2 or rot_range[0] > rot_range[1]:
            raise ValueError(f'rot_range must be (low, high) radians, got {rot_range}')
        if len(scale_ratio_range) != 2 or not 0 < scale_ratio_range[0] <= scale_ratio_range[1]:
            raise ValueError(f'scale_ratio_range must be (low, high) with 0 < low <= high, '
                             f'got {scale_ratio_range}')
        if len(translation_std) != 3 or min(translation_std) < 0:
            raise ValueError(f'translation_std must be 3 values >= 0, got {translation_std}')
        self.rot_range = rot_range
        self.scale_ratio_range = scale_ratio_range
        self.translation_std = np.asarray(translation_std, dtype=np.float64)

    def transform(self, results):
        angle = np.random.uniform(*self.rot_range)
        scale = np.random.uniform(*self.scale_ratio_range)
        trans = np.random.normal(scale=self.translation_std)
        c, s = np.cos(angle), np.sin(angle)
        lidar_aug = np.eye(4)
        lidar_aug[:3, :3] = scale * np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        lidar_aug[:3, 3] = trans
        if 'gt_bboxes_3d' in results:
            boxes = results['gt_bboxes_3d']
            boxes.rotate(angle)  # counter-clockwise about z: the rotation of lidar_aug
            boxes.scale(scale)
            boxes.translate(trans)
        inv_aug = np.linalg.inv(lidar_aug)
        for key in ('lidar2img', 'lidar2cam'):
            results[key] = [m @ inv_aug for m in results[key]]
        results['lidar2global'] = results['lidar2global'] @ inv_aug
        return results

    def __repr__(self):
        return (f'{self.__class__.__name__}(rot_range={self.rot_range}, scale_ratio_range='
                f'{self.scale_ratio_range}, translation_std={self.translation_std.tolist()})')
