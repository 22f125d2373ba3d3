"""Packing of a streaming sample into the model's inputs and data sample."""
from mmdet3d.datasets.transforms import Pack3DDetInputs
from mmdet3d.datasets.transforms.formating import to_tensor
from mmdet3d.registry import TRANSFORMS

DEFAULT_KEYS = ('img', 'gt_bboxes_3d', 'gt_labels_3d', 'gt_bboxes', 'gt_bboxes_labels',
                'centers_2d', 'depths', 'view_ids')
DEFAULT_META_KEYS = ('lidar2img', 'cam2img', 'lidar2cam', 'img_shape', 'pad_shape', 'ori_shape',
                     'lidar2global', 'ego2global', 'timestamp', 'scene_token', 'prev_exists',
                     'sample_idx', 'token', 'box_type_3d', 'box_mode_3d', 'img_path',
                     'num_views')


@TRANSFORMS.register_module()
class StreamPack3DDetInputs(Pack3DDetInputs):
    """mmdet3d's packing with every 2D annotation (boxes, labels, centres, depths, view ids) in
    ``gt_instances`` rather than centres and depths in ``gt_instances_3d``. The images (a list of
    N HxWx3 arrays) become one (N, 3, H, W) tensor that ``Det3DDataPreprocessor`` stacks into
    (B, N, 3, H, W)."""

    INSTANCEDATA_3D_KEYS = ['gt_bboxes_3d', 'gt_labels_3d', 'attr_labels']
    INSTANCEDATA_2D_KEYS = ['gt_bboxes', 'gt_bboxes_labels', 'centers_2d', 'depths', 'view_ids']

    def __init__(self, keys=DEFAULT_KEYS, meta_keys=DEFAULT_META_KEYS):
        super().__init__(keys=tuple(keys), meta_keys=tuple(meta_keys))

    def pack_single_results(self, results):
        # mmdet3d converts a fixed list of keys to tensors; view_ids is not on it.
        if 'view_ids' in results:
            results['view_ids'] = to_tensor(results['view_ids'])
        return super().pack_single_results(results)
