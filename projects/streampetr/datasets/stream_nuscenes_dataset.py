"""nuScenes for streaming camera-only detection: mmdet3d's v2 parsing plus what the temporal
memory needs (scene, time, pose) and the per-view 2D annotations of the auxiliary head."""
import math
from os import path as osp

import numpy as np
from mmdet3d.datasets import NuScenesDataset
from mmdet3d.registry import DATASETS

CAMERAS = ('CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT',
           'CAM_BACK_RIGHT')
STREAM_KEYS = ('scene_token', 'prev', 'timestamp', 'ego2global', 'lidar_points', 'images',
               'cam_instances')


@DATASETS.register_module()
class StreamNuScenesDataset(NuScenesDataset):
    """Camera-only nuScenes whose samples stay in info order (scene, then time).

    Each parsed sample gains ``scene_token`` (str), ``prev_exists`` (bool), ``timestamp`` (python
    float, float64 seconds) and ``lidar2global`` (4x4 float64 = ego2global @ lidar2ego); its
    ``ann_info`` gains the 2D boxes of all views concatenated (``gt_bboxes``,
    ``gt_bboxes_labels``, ``centers_2d``, ``depths``, ``view_ids`` = index of the view in
    ``images``). No sample is filtered out: a scene must stay contiguous for streaming. As in
    StreamPETR's training set (``use_valid_flag=False``), 3D boxes are kept when some LiDAR
    point hit them (``num_lidar_pts > 0``; ``use_valid_flag=True`` keeps LiDAR-or-radar ones);
    classes mapped out keep label -1 for ``ObjectNameFilter`` to drop, as in mmdet3d.

    ``seq_split_num`` (training only) cuts every scene into that many sequences of
    ``ceil(n / seq_split_num)`` samples (the last one shorter), as StreamPETR's
    ``seq_split_num=2``: ``prev_exists`` is False at the start of each, so the model resets its
    memory there and the streaming sampler shuffles the sequences, not the scenes.
    """

    # No 'version' here: the info file's metainfo says which nuScenes split it was made from.
    METAINFO = {k: v for k, v in NuScenesDataset.METAINFO.items() if k != 'version'}

    def __init__(self,
                 data_root,
                 ann_file,
                 pipeline=(),
                 data_prefix=None,
                 modality=None,
                 load_type='frame_based',
                 filter_empty_gt=False,
                 use_valid_flag=False,
                 seq_split_num=1,
                 **kwargs):
        if not isinstance(seq_split_num, int) or seq_split_num < 1:
            raise ValueError(f'seq_split_num must be an integer >= 1, got {seq_split_num!r}')
        if seq_split_num > 1 and kwargs.get('test_mode', False):
            raise ValueError(f'seq_split_num={seq_split_num} is for training: testing streams '
                             f'each scene whole (set seq_split_num=1 with test_mode=True)')
        self.seq_split_num = seq_split_num
        if filter_empty_gt:
            raise ValueError('StreamNuScenesDataset needs filter_empty_gt=False: dropping empty '
                             'samples would break the scenes that streaming walks in order')
        if load_type != 'frame_based':
            raise ValueError(f"StreamNuScenesDataset needs load_type='frame_based' (one sample "
                             f"holds all views), got {load_type!r}")
        if data_root is not None and not osp.isdir(data_root):
            raise FileNotFoundError(f'data_root {data_root!r} is not a directory')
        if data_prefix is None:
            data_prefix = {cam: f'samples/{cam}' for cam in CAMERAS}
        if modality is None:
            modality = dict(use_camera=True, use_lidar=False)
        super().__init__(data_root=data_root,
                         ann_file=ann_file,
                         pipeline=list(pipeline),
                         data_prefix=data_prefix,
                         modality=modality,
                         load_type=load_type,
                         filter_empty_gt=False,
                         use_valid_flag=use_valid_flag,
                         **kwargs)

    def load_data_list(self):
        if not osp.isfile(self.ann_file):
            raise FileNotFoundError(f'ann_file {self.ann_file!r} does not exist (make it with '
                                    f'tools/create_data.py)')
        data_list = super().load_data_list()
        if 'version' not in self._metainfo:
            raise KeyError(f"the metainfo of {self.ann_file!r} has no 'version' (e.g. "
                           f"'v1.0-trainval'); pass metainfo=dict(version=...) or remake it")
        if self.seq_split_num > 1:
            self._split_scenes(data_list)
        return data_list

    def _split_scenes(self, data_list):
        """Mark the first sample of each of the parts every scene is cut into as having no
        previous sample (the infos are sorted by scene, then time)."""
        start = 0
        while start < len(data_list):
            scene = data_list[start]['scene_token']
            end = start
            while end < len(data_list) and data_list[end]['scene_token'] == scene:
                end += 1
            step = math.ceil((end - start) / self.seq_split_num)
            for idx in range(start, end, step):
                data_list[idx]['prev_exists'] = False
            start = end

    def parse_data_info(self, info):
        missing = [k for k in STREAM_KEYS if k not in info]
        if missing:
            raise KeyError(f"sample {info.get('token', '?')!r} of {self.ann_file!r} lacks "
                           f'{missing}: streaming infos come from tools/create_data.py')
        info = super().parse_data_info(info)
        info['prev_exists'] = bool(info['prev'])
        info['timestamp'] = float(np.float64(info['timestamp']))
        lidar2ego = np.asarray(info['lidar_points']['lidar2ego'], dtype=np.float64)
        info['lidar2global'] = np.asarray(info['ego2global'], dtype=np.float64) @ lidar2ego
        return info

    def parse_ann_info(self, info):
        ann_info = super().parse_ann_info(info)
        ann_info.update(self._parse_cam_instances(info))
        return ann_info

    def _parse_cam_instances(self, info):
        """Concatenate the per-camera 2D boxes in view order, dropping classes mapped out."""
        boxes, labels, centers, depths, views = [], [], [], [], []
        for view_id, cam in enumerate(info['images']):
            for inst in info['cam_instances'].get(cam, []):
                label = self.label_mapping[inst['bbox_label']]
                if label < 0:
                    continue
                boxes.append(inst['bbox'])
                labels.append(label)
                centers.append(inst['center_2d'])
                depths.append(inst['depth'])
                views.append(view_id)
        return dict(gt_bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                    gt_bboxes_labels=np.asarray(labels, dtype=np.int64),
                    centers_2d=np.asarray(centers, dtype=np.float32).reshape(-1, 2),
                    depths=np.asarray(depths, dtype=np.float32),
                    view_ids=np.asarray(views, dtype=np.int64))
