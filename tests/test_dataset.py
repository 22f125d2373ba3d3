"""StreamNuScenesDataset with the full pipeline, built from config dicts through the registries,
yields the data contract of docs/architecture.md."""
import numpy as np
import pytest
import torch
from mmdet3d.registry import DATASETS, MODELS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope

import projects.streampetr  # noqa: F401  (registers the Stream* dataset and transforms)

init_default_scope('mmdet3d')  # as configs do: the dataset builds its pipeline by name

CLASSES = ('car', 'truck', 'trailer', 'bus', 'construction_vehicle', 'bicycle', 'motorcycle',
           'pedestrian', 'traffic_cone', 'barrier')
FINAL_DIM = (96, 256)
TRAIN_PIPELINE = [
    dict(type='StreamLoadMultiViewImageFromFiles'),
    dict(type='StreamLoadAnnotations3D'),
    dict(type='ObjectNameFilter', classes=CLASSES),
    dict(type='StreamResizeCropFlipImage', final_dim=FINAL_DIM, resize_lim=(0.6, 0.75),
         rot_lim=(-5.0, 5.0)),
    dict(type='StreamGlobalRotScaleTransImage'),
    dict(type='StreamPack3DDetInputs'),
]
TEST_PIPELINE = [
    dict(type='StreamLoadMultiViewImageFromFiles'),
    dict(type='StreamResizeCropFlipImage', final_dim=FINAL_DIM, test_mode=True),
    dict(type='StreamPack3DDetInputs', keys=['img']),
]
PREPROCESSOR = dict(type='Det3DDataPreprocessor', mean=[103.53, 116.28, 123.675],
                    std=[57.375, 57.12, 58.395], bgr_to_rgb=False, pad_size_divisor=32)


def dataset_cfg(infos, split, pipeline, **kwargs):
    return dict(type='StreamNuScenesDataset', data_root=infos['root'], ann_file=infos[split],
                pipeline=pipeline, test_mode=pipeline is TEST_PIPELINE, **kwargs)


def test_training_samples_follow_the_data_contract(nusc_infos):
    # No validity filter here, so that every 2D box has its 3D box to be checked against.
    dataset = DATASETS.build(dataset_cfg(nusc_infos, 'train', TRAIN_PIPELINE,
                                         use_valid_flag=False))
    assert len(dataset) > 0 and dataset.metainfo['version']
    np.random.seed(0)
    samples = [dataset[i] for i in range(min(len(dataset), 4))]
    for sample in samples:
        ds = sample['data_samples']
        meta = ds.metainfo
        num_views = len(meta['lidar2img'])
        assert num_views == 6 and sample['inputs']['img'].shape == (6, 3, *FINAL_DIM)
        assert meta['img_shape'] == [FINAL_DIM] * 6
        assert all(m.shape == (4, 4) and m.dtype == np.float64 for m in meta['lidar2img'])
        assert meta['lidar2global'].shape == (4, 4) and meta['lidar2global'].dtype == np.float64
        assert type(meta['timestamp']) is float and meta['timestamp'] > 1e9
        assert isinstance(meta['scene_token'], str) and isinstance(meta['prev_exists'], bool)
        assert isinstance(meta['token'], str) and isinstance(meta['sample_idx'], int)
        boxes_3d = ds.gt_instances_3d.bboxes_3d
        assert isinstance(boxes_3d, LiDARInstance3DBoxes) and boxes_3d.tensor.shape[1] == 9
        assert len(ds.gt_instances_3d.labels_3d) == len(boxes_3d)
        assert ds.gt_instances_3d.labels_3d.min() >= 0 if len(boxes_3d) else True
        gt2d = ds.gt_instances
        assert set(gt2d.keys()) == {'bboxes', 'labels', 'centers_2d', 'depths', 'view_ids'}
        # Every 2D centre / depth is where its 3D box centre lands through the augmented
        # matrices (image affine and global rotation / scale included), clipped to the image.
        centres = boxes_3d.gravity_center.double().numpy()
        for centre_2d, depth, view in zip(gt2d.centers_2d.numpy(), gt2d.depths.numpy(),
                                          gt2d.view_ids.numpy()):
            homo = np.c_[centres, np.ones(len(centres))]
            pix = homo @ meta['lidar2img'][view].T
            cam_depth = (homo @ meta['lidar2cam'][view].T)[:, 2]
            uv = (pix[:, :2] / pix[:, 2:3]).clip(0, FINAL_DIM[::-1])
            err = np.linalg.norm(uv - centre_2d, axis=1)
            assert np.any((err < 1e-2) & (np.abs(cam_depth - depth) < 1e-3))
    assert sum(len(s['data_samples'].gt_instances) for s in samples) > 0

    batch = MODELS.build(PREPROCESSOR)(pseudo_collate(samples[:2]), training=True)
    imgs = batch['inputs']['imgs']
    assert imgs.shape == (2, 6, 3, 96, 256) and imgs.dtype == torch.float32


def test_test_samples_keep_scenes_time_and_poses(nusc_infos):
    dataset = DATASETS.build(dataset_cfg(nusc_infos, 'val', TEST_PIPELINE))
    previous = None
    for idx in range(len(dataset)):
        info = dataset.get_data_info(idx)
        lidar2global = np.asarray(info['ego2global']) @ np.asarray(
            info['lidar_points']['lidar2ego'])
        np.testing.assert_array_equal(info['lidar2global'], lidar2global)
        same_scene = previous is not None and previous['scene_token'] == info['scene_token']
        assert info['prev_exists'] == same_scene
        if same_scene:
            assert info['timestamp'] > previous['timestamp']
        previous = info
    meta = dataset[0]['data_samples'].metainfo
    assert meta['sample_idx'] == 0 and meta['prev_exists'] is False
    # No global augmentation at test: the LiDAR pose is the info's one.
    np.testing.assert_array_equal(meta['lidar2global'], dataset.get_data_info(0)['lidar2global'])
    assert len(dataset[0]['data_samples'].gt_instances_3d) == 0


def test_bad_paths_and_settings_are_named(nusc_infos, tmp_path):
    missing = tmp_path / 'nope.pkl'
    with pytest.raises(FileNotFoundError, match='nope.pkl'):
        DATASETS.build(dict(type='StreamNuScenesDataset', data_root=nusc_infos['root'],
                            ann_file=str(missing)))
    with pytest.raises(FileNotFoundError, match='no_root'):
        DATASETS.build(dict(type='StreamNuScenesDataset', data_root=str(tmp_path / 'no_root'),
                            ann_file=nusc_infos['train']))
    with pytest.raises(ValueError, match='filter_empty_gt'):
        DATASETS.build(dataset_cfg(nusc_infos, 'train', [], filter_empty_gt=True))



def test_training_scenes_split_into_sequences_and_test_scenes_stay_whole(nusc_infos):
    """StreamPETR's seq_split_num=2: the memory resets at the start of each half of a training
    scene (prev_exists False there); testing streams each scene whole."""
    whole = DATASETS.build(dataset_cfg(nusc_infos, 'train', []))
    split = DATASETS.build(dataset_cfg(nusc_infos, 'train', [], seq_split_num=2))
    scenes = [whole.get_data_info(i)['scene_token'] for i in range(len(whole))]
    flags = [split.get_data_info(i)['prev_exists'] for i in range(len(split))]
    # Synthetic scenes of 6 key frames: the halves start at frames 0 and 3.
    assert len(scenes) == 6 and len(set(scenes)) == 1
    assert flags == [False, True, True, False, True, True]
    assert [whole.get_data_info(i)['prev_exists'] for i in range(6)] == [False] + [True] * 5
    with pytest.raises(ValueError, match='seq_split_num=2 is for training'):
        DATASETS.build(dataset_cfg(nusc_infos, 'val', TEST_PIPELINE, seq_split_num=2))
    with pytest.raises(ValueError, match='seq_split_num must be an integer >= 1'):
        DATASETS.build(dataset_cfg(nusc_infos, 'train', [], seq_split_num=0))


@pytest.mark.parametrize('lengths,split,starts', [
    ([7, 6], 2, [0, 4, 7, 10]),          # ceil(7 / 2) = 4: parts of 4 and 3
    ([5, 1, 4], 3, [0, 2, 4, 5, 6, 8]),  # ceil(5 / 3) = 2; a 1-frame scene stays whole
    ([40], 2, [0, 20]),
])
def test_sequence_starts_follow_streampetrs_split(lengths, split, starts):
    from projects.streampetr.datasets.stream_nuscenes_dataset import StreamNuScenesDataset
    data_list = [dict(scene_token=f's{s}', prev_exists=t > 0)
                 for s, n in enumerate(lengths) for t in range(n)]
    holder = StreamNuScenesDataset.__new__(StreamNuScenesDataset)
    holder.seq_split_num = split
    holder._split_scenes(data_list)
    assert [i for i, d in enumerate(data_list) if not d['prev_exists']] == starts
