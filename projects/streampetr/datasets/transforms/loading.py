"""Loading of the multi-view images with their projection matrices, and of the annotations."""
import numpy as np
from mmdet3d.datasets.transforms import LoadAnnotations3D, LoadMultiViewImageFromFiles
from mmdet3d.registry import TRANSFORMS


def pad_to_4x4(matrix):
    """A 3x3 (or 3x4) camera matrix as a 4x4 float64 homogeneous matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    out = np.eye(4)
    out[:matrix.shape[0], :matrix.shape[1]] = matrix
    return out


@TRANSFORMS.register_module()
class StreamLoadMultiViewImageFromFiles(LoadMultiViewImageFromFiles):
    """mmdet3d's multi-view loader (views in ``images`` order) plus 4x4 float64 ``cam2img``,
    ``lidar2cam`` and ``lidar2img`` = cam2img @ lidar2cam per view, and per-view
    ``img_shape`` / ``ori_shape`` / ``pad_shape`` lists."""

    def __init__(self, to_float32=False, color_type='color', backend_args=None, num_views=6):
        super().__init__(to_float32=to_float32, color_type=color_type,
                         backend_args=backend_args, num_views=num_views)

    def transform(self, results):
        if len(results['images']) != self.num_views:
            raise ValueError(f"sample {results.get('token', '?')!r} has "
                             f"{len(results['images'])} views {list(results['images'])}, "
                             f'expected num_views={self.num_views}')
        results = super().transform(results)
        results['cam2img'] = [pad_to_4x4(m) for m in results['cam2img']]
        results['lidar2cam'] = [pad_to_4x4(m) for m in results['lidar2cam']]
        results['lidar2img'] = [k @ e for k, e in zip(results['cam2img'], results['lidar2cam'])]
        shapes = [img.shape[:2] for img in results['img']]
        results['img_shape'], results['ori_shape'], results['pad_shape'] = \
            shapes, list(shapes), list(shapes)
        return results


@TRANSFORMS.register_module()
class StreamLoadAnnotations3D(LoadAnnotations3D):
    """mmdet3d's annotation loader, by default taking the 3D boxes and labels and the 2D boxes,
    labels, centres and depths of all views, plus their ``view_ids``."""

    def __init__(self, with_bbox_3d=True, with_label_3d=True, with_bbox=True, with_label=True,
                 with_bbox_depth=True, **kwargs):
        super().__init__(with_bbox_3d=with_bbox_3d, with_label_3d=with_label_3d,
                         with_bbox=with_bbox, with_label=with_label,
                         with_bbox_depth=with_bbox_depth, **kwargs)

    def transform(self, results):
        results = super().transform(results)
        if self.with_bbox:
            results['view_ids'] = results['ann_info']['view_ids']
        return results
