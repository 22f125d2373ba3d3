"""StreamPETR's transforms keep images, camera matrices, 2D and 3D annotations and the LiDAR pose
consistent, and pack into the data contract through mmdet3d's Det3DDataPreprocessor."""
import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS, TRANSFORMS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmengine.dataset import pseudo_collate

import projects.streampetr  # noqa: F401  (registers the Stream* transforms)

H, W = 225, 400  # synthetic source images
FOCAL = 200.0


def camera_rig(num_views=6):
    """lidar2cam and cam2img (4x4) of cameras at the LiDAR origin looking around horizontally."""
    lidar2cam, cam2img = [], []
    for i in range(num_views):
        yaw = np.deg2rad(60.0 * i)
        forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        rot = np.stack([right, [0.0, 0.0, -1.0], forward])  # rows: camera x (right), y (down), z
        ext = np.eye(4)
        ext[:3, :3] = rot
        ext[:3, 3] = -rot @ np.array([0.3, 0.0, 1.6])  # camera centre in the LiDAR frame
        lidar2cam.append(ext)
        intr = np.eye(4)
        intr[:3, :3] = [[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1]]
        cam2img.append(intr)
    return lidar2cam, cam2img


def project(lidar2img, point):
    p = lidar2img @ np.append(point, 1.0)
    return p[:2] / p[2], p[2]


def point_in_front(view, dist=10.0, height=0.5, side=1.0):
    yaw = np.deg2rad(60.0 * view)
    return np.array([dist * np.cos(yaw) + side * np.sin(yaw),
                     dist * np.sin(yaw) - side * np.cos(yaw), height])


def draw_blob(shape, uv, sigma=2.0):
    """A Gaussian dot centred on the continuous pixel position uv (image spans [0, W])."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    blob = np.exp(-((xs - uv[0])**2 + (ys - uv[1])**2) / (2 * sigma**2))
    return np.repeat((255 * blob)[..., None], 3, axis=2).astype(np.uint8)


def find_blob(img):
    weight = img[..., 0].astype(np.float64)
    weight[weight < 40] = 0  # ignore the faint tails the resampling spreads
    ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]] + 0.5
    return np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()


def make_results(num_views=6):
    """A loaded sample: one dot per view where a known 3D point projects, and that point's 2D
    box, centre and depth, plus one 3D box."""
    lidar2cam, cam2img = camera_rig(num_views)
    lidar2img = [k @ e for k, e in zip(cam2img, lidar2cam)]
    points = [point_in_front(v) for v in range(num_views)]
    imgs, boxes, centers, depths = [], [], [], []
    for v, point in enumerate(points):
        uv, depth = project(lidar2img[v], point)
        imgs.append(draw_blob((H, W), uv))
        boxes.append([uv[0] - 20, uv[1] - 15, uv[0] + 20, uv[1] + 15])
        centers.append(uv)
        depths.append(depth)
    bboxes_3d = LiDARInstance3DBoxes(
        torch.tensor([[12.0, -3.0, -1.0, 4.2, 1.9, 1.6, 0.4, 2.0, -1.0]]), box_dim=9)
    lidar2global = np.eye(4)
    lidar2global[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    lidar2global[:3, 3] = [600.0, 1600.0, 1.8]
    results = dict(
        img=imgs, img_shape=[(H, W)] * num_views, ori_shape=[(H, W)] * num_views,
        pad_shape=[(H, W)] * num_views, lidar2cam=lidar2cam, cam2img=[m.copy() for m in cam2img],
        lidar2img=lidar2img, lidar2global=lidar2global, ego2global=lidar2global.copy(),
        gt_bboxes=np.array(boxes, dtype=np.float32),
        gt_bboxes_labels=np.arange(num_views, dtype=np.int64),
        centers_2d=np.array(centers, dtype=np.float32),
        depths=np.array(depths, dtype=np.float32), view_ids=np.arange(num_views),
        gt_bboxes_3d=bboxes_3d, gt_labels_3d=np.array([0]),
        timestamp=1533151603.547590, scene_token='scene-0', prev_exists=False, sample_idx=0,
        token='tok-0', box_type_3d=LiDARInstance3DBoxes, num_views=num_views)
    return results, points


AUGS = [
    dict(final_dim=(96, 256), resize_lim=(0.6, 0.8), bot_pct_lim=(0.0, 0.2), rot_lim=(-5, 5),
         rand_flip=True),
    dict(final_dim=(96, 256), resize_lim=(0.6, 0.8), test_mode=True),
    dict(final_dim=(200, 352), resize_lim=(0.8, 1.2), rot_lim=(0.0, 0.0), rand_flip=True),
]


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('cfg', AUGS)
def test_image_aug_moves_pixels_as_it_moves_projections(cfg, seed):
    np.random.seed(seed)
    results, points = make_results()
    aug = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', **cfg))
    out = aug(results)
    fh, fw = cfg['final_dim']
    checked = 0
    for v, point in enumerate(points):
        assert out['img'][v].shape == (fh, fw, 3)
        assert out['img_shape'][v] == (fh, fw)
        uv, depth = project(out['lidar2img'][v], point)
        np.testing.assert_allclose(out['lidar2img'][v], out['cam2img'][v] @ out['lidar2cam'][v])
        if 8 <= uv[0] <= fw - 8 and 8 <= uv[1] <= fh - 8:  # the dot is whole in the output
            np.testing.assert_allclose(find_blob(out['img'][v]), uv, atol=0.25)
            checked += 1
        # The 2D annotations follow the same affine; depth is not changed.
        kept = np.flatnonzero(out['view_ids'] == v)
        inside = 0 <= uv[0] < fw and 0 <= uv[1] < fh
        assert len(kept) == int(inside)
        if inside:
            np.testing.assert_allclose(out['centers_2d'][kept[0]], uv, atol=1e-3)
            np.testing.assert_allclose(out['depths'][kept[0]], depth, rtol=1e-5)
            box = out['gt_bboxes'][kept[0]]
            assert 0 <= box[0] < box[2] <= fw and 0 <= box[1] < box[3] <= fh
            assert out['gt_bboxes_labels'][kept[0]] == v
    assert checked >= 3


def test_image_aug_test_mode_is_deterministic_and_bottom_centred():
    aug = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', final_dim=(96, 256),
                                test_mode=True))
    first, _ = make_results()
    first = aug(first)
    second = aug(make_results()[0])
    for a, b in zip(first['lidar2img'], second['lidar2img']):
        np.testing.assert_array_equal(a, b)
    # resize = max(96 / 225, 256 / 400) = 0.64: 256 x 144, crop the bottom 96 rows.
    expected = np.eye(4)
    expected[:2, :3] = [[0.64, 0, 0], [0, 144 / 225, -(144 - 96)]]
    np.testing.assert_allclose(first['cam2img'][0], expected @ camera_rig()[1][0])


def test_image_aug_drops_boxes_that_leave_the_image():
    results, _ = make_results(num_views=1)
    # Test mode on 225x400 -> 96x256: x' = 0.64 x, y' = 0.64 y - 48 (bottom crop of 144 rows).
    results['gt_bboxes'] = np.array([[10, 10, 50, 40],  # centre leaves above
                                     [100, 100, 200, 180],  # inside
                                     [300, 60, 399, 90],  # centre inside, box clipped
                                     [150, 150, 151, 151]],  # under a pixel wide
                                    dtype=np.float32)
    results['centers_2d'] = np.array([[30, 25], [150, 140], [350, 80], [150.5, 150.5]],
                                     dtype=np.float32)
    results['depths'] = np.array([5.0, 6.0, 7.0, 8.0], dtype=np.float32)
    results['gt_bboxes_labels'] = np.array([1, 2, 3, 4])
    results['view_ids'] = np.zeros(4, dtype=np.int64)
    aug = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', final_dim=(96, 256),
                                test_mode=True))
    out = aug(results)
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [2, 3])
    np.testing.assert_allclose(out['gt_bboxes'], [[64, 16, 128, 67.2], [192, 0, 255.36, 9.6]],
                               atol=1e-4)
    np.testing.assert_allclose(out['centers_2d'], [[96, 41.6], [224, 3.2]], atol=1e-4)
    np.testing.assert_allclose(out['depths'], [6.0, 7.0])
    np.testing.assert_array_equal(out['view_ids'], [0, 0])


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_global_aug_keeps_pixels_and_global_poses(seed):
    np.random.seed(seed)
    results, points = make_results()
    before = {k: [m.copy() for m in results[k]] for k in ('lidar2img', 'lidar2cam')}
    lidar2global = results['lidar2global'].copy()
    box = results['gt_bboxes_3d'].tensor[0].numpy().astype(np.float64)
    centre = results['gt_bboxes_3d'].gravity_center[0].numpy().astype(np.float64)
    aug = TRANSFORMS.build(dict(type='StreamGlobalRotScaleTransImage', rot_range=(-0.4, 0.4),
                                scale_ratio_range=(0.9, 1.1), translation_std=(0.5, 0.5, 0.2)))
    out = aug(results)
    new_box = out['gt_bboxes_3d'].tensor[0].numpy().astype(np.float64)
    new_centre = out['gt_bboxes_3d'].gravity_center[0].numpy().astype(np.float64)
    scale = new_box[3] / box[3]
    assert 0.9 <= scale <= 1.1 and not np.isclose(new_box[6], box[6])
    np.testing.assert_allclose(new_box[3:6], box[3:6] * scale, rtol=1e-5)
    # The box centre, its heading and its velocity are the same in the global frame.
    new2global = out['lidar2global']
    np.testing.assert_allclose(new2global @ np.append(new_centre, 1),
                               lidar2global @ np.append(centre, 1), atol=1e-4)

    def heading(m, yaw):
        d = m[:3, :3] @ np.array([np.cos(yaw), np.sin(yaw), 0.0])
        return d / np.linalg.norm(d)

    np.testing.assert_allclose(heading(new2global, new_box[6]), heading(lidar2global, box[6]),
                               atol=1e-5)
    np.testing.assert_allclose(new2global[:3, :2] @ new_box[7:9],
                               lidar2global[:3, :2] @ box[7:9], atol=1e-5)
    # A point moved with the frame lands on the same pixel with the new projections.
    aug_matrix = np.linalg.inv(new2global) @ lidar2global
    for v, point in enumerate(points):
        moved = (aug_matrix @ np.append(point, 1))[:3]
        np.testing.assert_allclose(project(out['lidar2img'][v], moved)[0],
                                   project(before['lidar2img'][v], point)[0], atol=1e-6)
        np.testing.assert_allclose(out['lidar2cam'][v] @ np.append(moved, 1),
                                   before['lidar2cam'][v] @ np.append(point, 1), atol=1e-9)


def test_global_aug_rejects_bad_ranges():
    with pytest.raises(ValueError, match='scale_ratio_range'):
        TRANSFORMS.build(dict(type='StreamGlobalRotScaleTransImage', scale_ratio_range=(0, 1)))
    with pytest.raises(ValueError, match='resize_lim'):
        TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', resize_lim=(0.5, 0.4)))


def test_pack_and_preprocess_give_the_data_contract():
    np.random.seed(0)
    pipeline = [TRANSFORMS.build(t) for t in (
        dict(type='StreamResizeCropFlipImage', final_dim=(100, 250), resize_lim=(0.6, 0.7)),
        dict(type='StreamGlobalRotScaleTransImage'),
        dict(type='StreamPack3DDetInputs'))]
    samples = []
    for _ in range(2):
        results = make_results()[0]
        for t in pipeline:
            results = t(results)
        samples.append(results)
    assert samples[0]['inputs']['img'].shape == (6, 3, 100, 250)
    preprocessor = MODELS.build(dict(type='Det3DDataPreprocessor', mean=[103.53, 116.28, 123.675],
                                     std=[57.375, 57.12, 58.395], bgr_to_rgb=False,
                                     pad_size_divisor=32))
    batch = preprocessor(pseudo_collate(samples), training=True)
    imgs = batch['inputs']['imgs']
    assert imgs.shape == (2, 6, 3, 128, 256) and imgs.dtype == torch.float32
    assert torch.all(imgs[..., 100:, :] == 0) and torch.all(imgs[..., 250:] == 0)
    sample = batch['data_samples'][0]
    meta = sample.metainfo
    assert len(meta['lidar2img']) == 6 and all(m.shape == (4, 4) for m in meta['lidar2img'])
    assert meta['img_shape'] == [(100, 250)] * 6
    assert meta['lidar2global'].shape == (4, 4) and meta['lidar2global'].dtype == np.float64
    assert isinstance(meta['timestamp'], float) and meta['timestamp'] == 1533151603.547590
    assert meta['scene_token'] == 'scene-0' and meta['prev_exists'] is False
    assert meta['sample_idx'] == 0 and meta['token'] == 'tok-0'
    gt3d = sample.gt_instances_3d
    assert isinstance(gt3d.bboxes_3d, LiDARInstance3DBoxes)
    assert gt3d.bboxes_3d.tensor.shape == (1, 9)
    assert gt3d.labels_3d.tolist() == [0]
    gt2d = sample.gt_instances
    k = len(gt2d)
    assert k > 0 and set(gt2d.keys()) == {'bboxes', 'labels', 'centers_2d', 'depths', 'view_ids'}
    assert gt2d.bboxes.shape == (k, 4) and gt2d.centers_2d.shape == (k, 2)
    assert gt2d.depths.shape == (k,) and gt2d.labels.dtype == torch.int64
    assert gt2d.view_ids.dtype == torch.int64 and gt2d.view_ids.max() < 6
