"""StreamPETR's transforms keep images, camera matrices, 2D and 3D annotations and the LiDAR pose
consistent, and pack into the data contract through mmdet3d's Det3DDataPreprocessor."""
import cv2
import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS, TRANSFORMS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmengine.dataset import pseudo_collate

import projects.streampetr  # noqa: F401  (registers the Stream* transforms)
from projects.streampetr.datasets.transforms.image_aug import visible_boxes

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


def mapped_box(box, affine, fh, fw):
    """A box's four corners through ``affine``, enclosed and clipped to the image."""
    corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]])
    corners = corners @ affine[:2, :2].T + affine[:2, 2]
    lo, hi = corners.min(0), corners.max(0)
    return np.array([np.clip(lo[0], 0, fw), np.clip(lo[1], 0, fh), np.clip(hi[0], 0, fw),
                     np.clip(hi[1], 0, fh)])


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('cfg', AUGS)
def test_image_aug_moves_pixels_as_it_moves_projections(cfg, seed):
    np.random.seed(seed)
    results, points = make_results()
    boxes_before = results['gt_bboxes'].copy()
    cam2img_before = [m.copy() for m in results['cam2img']]
    aug = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', **cfg))
    out = aug(results)
    fh, fw = cfg['final_dim']
    checked = 0
    for v, point in enumerate(points):
        assert out['img'][v].shape == (fh, fw, 3) and out['img'][v].dtype == np.float32
        assert out['img_shape'][v] == (fh, fw)
        uv, depth = project(out['lidar2img'][v], point)
        np.testing.assert_allclose(out['lidar2img'][v], out['cam2img'][v] @ out['lidar2cam'][v])
        if 8 <= uv[0] <= fw - 8 and 8 <= uv[1] <= fh - 8:  # the dot is whole in the output
            np.testing.assert_allclose(find_blob(out['img'][v]), uv, atol=0.25)
            checked += 1
        # The 2D annotations follow the same affine (centres clipped to the image); depth is
        # not changed; a box is kept when at least 2 x 2 pixels of it stay in the image.
        affine = (out['cam2img'][v] @ np.linalg.inv(cam2img_before[v]))[:3, :3]
        box = mapped_box(boxes_before[v], affine, fh, fw)
        kept = np.flatnonzero(out['view_ids'] == v)
        assert len(kept) == int(box[2] - box[0] >= 2 and box[3] - box[1] >= 2)
        if len(kept):
            np.testing.assert_allclose(out['centers_2d'][kept[0]],
                                       [np.clip(uv[0], 0, fw), np.clip(uv[1], 0, fh)], atol=1e-3)
            np.testing.assert_allclose(out['depths'][kept[0]], depth, rtol=1e-5)
            np.testing.assert_allclose(out['gt_bboxes'][kept[0]], box, atol=1e-3)
            assert out['gt_bboxes_labels'][kept[0]] == v
    assert checked >= 3


def official_draw(seed, h, w, fh, fw, resize_lim, bot_pct_lim, rot_lim, rand_flip):
    """StreamPETR's `_sample_augmentation` in training, restated: the per-frame draws in order."""
    rng = np.random.RandomState(seed)
    resize = rng.uniform(*resize_lim)
    new_w, new_h = int(w * resize), int(h * resize)
    crop_y = int((1 - rng.uniform(*bot_pct_lim)) * new_h) - fh
    crop_x = int(rng.uniform(0, max(0, new_w - fw)))
    flip = bool(rand_flip and rng.choice([0, 1]))
    angle = rng.uniform(*rot_lim)
    return (new_w, new_h), (crop_x, crop_y), flip, angle


@pytest.mark.parametrize('seed', range(8))
def test_image_aug_draws_once_per_frame_for_all_views(seed):
    """One draw per frame (StreamPETR's transform_3d.py:127): six identical views stay identical,
    every view gets the same affine, and the draws are StreamPETR's for the same seed."""
    lims = dict(resize_lim=(0.5, 0.9), bot_pct_lim=(0.0, 0.2), rot_lim=(0.0, 0.0),
                rand_flip=True)
    fh, fw = 96, 256
    results, _ = make_results()
    results['img'] = [draw_blob((H, W), (120.3 + 7 * seed, 80.6)) for _ in range(6)]
    np.random.seed(seed)
    out = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', final_dim=(fh, fw),
                                **lims))(results)
    for img in out['img'][1:]:
        np.testing.assert_array_equal(img, out['img'][0])
    (new_w, new_h), (cx, cy), flip, _ = official_draw(seed, H, W, fh, fw, **lims)
    expected = np.eye(4)
    expected[:2, :3] = [[new_w / W, 0, -cx], [0, new_h / H, -cy]]
    if flip:
        expected[0, :3] = [-new_w / W, 0, fw + cx]
    for v, intr in enumerate(camera_rig()[1]):
        np.testing.assert_allclose(out['cam2img'][v], expected @ intr, atol=1e-9)


def test_image_aug_flips_about_half_the_frames_all_views_together():
    flips = []
    for seed in range(40):
        np.random.seed(seed)
        out = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', final_dim=(96, 256),
                                    resize_lim=(0.7, 0.7)))(make_results()[0])
        signs = {np.sign(m[0, 0]) for m in out['cam2img']}
        assert len(signs) == 1
        flips.append(signs.pop() < 0)
    assert 10 <= sum(flips) <= 30


def test_image_aug_refuses_views_of_different_sizes():
    results, _ = make_results()
    results['img'][3] = results['img'][3][:200]
    aug = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', final_dim=(96, 256)))
    with pytest.raises(ValueError, match="'tok-0'.*one augmentation per frame"):
        aug(results)


def pillow_bicubic(img, new_w, new_h):
    """Pillow's BICUBIC resize restated: separable, Keys cubic (a = -0.5) with its support
    widened by the downscale factor, weights normalised, rows first, rounded to 8 bits after
    each pass."""
    def cubic(x, a=-0.5):
        x = np.abs(x)
        return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))

    def weights(n_in, n_out):
        scale = n_in / n_out
        width = max(scale, 1.0)
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            c = (o + 0.5) * scale
            lo, hi = max(int(c - 2 * width + 0.5), 0), min(int(c + 2 * width + 0.5), n_in)
            w = cubic((np.arange(lo, hi) - c + 0.5) / width)
            m[o, lo:hi] = w / w.sum()
        return m

    rows = np.clip(np.round(np.einsum('ow,hwc->hoc', weights(img.shape[1], new_w), img)), 0,
                   255)
    return np.clip(np.round(np.einsum('oh,hwc->owc', weights(img.shape[0], new_h), rows)), 0,
                   255)


def test_test_time_resize_is_pillows_default_bicubic():
    """Test-time pixels: Pillow's resize filter (what StreamPETR's `img.resize(dims)` gets from
    Pillow >= 7.0 by default), not OpenCV's INTER_AREA; centred bottom crop."""
    from PIL import Image
    rng = np.random.default_rng(0)
    img = (np.cumsum(rng.integers(0, 256, (H, W, 3)), axis=1) % 256).astype(np.uint8)
    results, _ = make_results()
    results['img'] = [img.astype(np.float32)] * 6
    out = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', final_dim=(96, 200),
                                test_mode=True))(results)
    # resize = max(96 / 225, 200 / 400) = 0.5: 200 x 112, crop the bottom 96 rows.
    reference = pillow_bicubic(img.astype(np.float64), 200, 112)[16:]
    diff = np.abs(out['img'][0] - reference)
    assert diff.max() <= 1 and diff.mean() < 0.01  # Pillow's fixed-point rounding
    default = np.asarray(Image.fromarray(img).resize((200, 112)), dtype=np.float32)[16:]
    np.testing.assert_array_equal(out['img'][0], default)
    area = cv2.resize(img, (200, 112), interpolation=cv2.INTER_AREA)[16:].astype(np.float32)
    assert np.abs(area - reference).max() > 10


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


def one_view_boxes(boxes, centers, depths):
    results, _ = make_results(num_views=1)
    results['gt_bboxes'] = np.array(boxes, dtype=np.float32)
    results['centers_2d'] = np.array(centers, dtype=np.float32)
    results['depths'] = np.array(depths, dtype=np.float32)
    results['gt_bboxes_labels'] = np.arange(1, len(boxes) + 1)
    results['view_ids'] = np.zeros(len(boxes), dtype=np.int64)
    return results


def test_image_aug_clips_centres_and_drops_boxes_under_two_pixels():
    # Test mode on 225x400 -> 96x256: x' = 0.64 x, y' = 0.64 y - 48 (bottom crop of 144 rows).
    results = one_view_boxes(
        [[10, 10, 50, 40],       # leaves above: 0 rows left
         [100, 100, 200, 180],   # inside
         [300, 60, 399, 90],     # clipped at the top, 9.6 rows left; centre inside
         [0, 100, 40, 120],      # centre left of the image: clipped to x = 0, box kept
         [150, 150, 153, 160],   # 1.92 pixels wide
         [150, 60, 160, 78.90625]],  # 2.5 rows left after clipping
        [[30, 25], [150, 140], [350, 80], [-10, 110], [151.5, 155], [155, 80]],
        [5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    aug = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', final_dim=(96, 256),
                                test_mode=True))
    out = aug(results)
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [2, 3, 4, 6])
    np.testing.assert_allclose(out['gt_bboxes'], [[64, 16, 128, 67.2], [192, 0, 255.36, 9.6],
                                                  [0, 16, 25.6, 28.8], [96, 0, 102.4, 2.5]],
                               atol=1e-4)
    np.testing.assert_allclose(out['centers_2d'], [[96, 41.6], [224, 3.2], [0, 22.4],
                                                   [99.2, 3.2]], atol=1e-4)
    np.testing.assert_allclose(out['depths'], [6.0, 7.0, 8.0, 10.0])
    np.testing.assert_array_equal(out['view_ids'], [0, 0, 0, 0])


def test_image_aug_drops_boxes_hidden_behind_nearer_ones():
    # Test mode at scale 1 (final_dim = source size, no crop): boxes stay where they are.
    results = one_view_boxes(
        [[100, 50, 140, 90],     # far, wholly behind box 2: dropped
         [90, 40, 150, 100],     # near
         [140.5, 60, 170, 80],   # behind box 2 except pixel columns 150..169: kept
         [10, 10, 30, 30],       # alone: kept
         [10.5, 10.5, 12.5, 12.5],  # in front of box 4, whole pixels 11..12: kept
         [90.2, 40, 149.8, 99.6]],  # farther than box 2 and inside it: dropped
        [[120, 70], [120, 70], [155, 70], [20, 20], [11.5, 11.5], [120, 70]],
        [40.0, 10.0, 20.0, 30.0, 5.0, 12.0])
    aug = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', final_dim=(H, W),
                                test_mode=True))
    out = aug(results)
    np.testing.assert_array_equal(out['gt_bboxes_labels'], [2, 3, 4, 5])
    off = TRANSFORMS.build(dict(type='StreamResizeCropFlipImage', final_dim=(H, W),
                                test_mode=True, filter_occluded=False))
    assert len(off(one_view_boxes(results['gt_bboxes'][:1].tolist() * 2, [[0, 0]] * 2,
                                  [1.0, 1.0]))['gt_bboxes']) == 2


@pytest.mark.parametrize('seed', range(5))
def test_visible_boxes_match_a_per_pixel_depth_test(seed):
    """Against an independent z-buffer: a pixel belongs to the nearest box covering it (of equal
    depths, the later one); a box is visible when it owns a pixel."""
    rng = np.random.default_rng(seed)
    shape = (40, 60)
    xy = rng.uniform(0, 55, (25, 2)) * [1, 35 / 55]
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 20, (25, 2))], 1)
    depths = rng.choice([5.0, 10.0, 15.0, 20.0, 30.0], 25)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    covers = ((np.ceil(boxes[:, 0, None, None]) <= xs) & (xs < np.floor(boxes[:, 2, None, None]))
              & (np.ceil(boxes[:, 1, None, None]) <= ys)
              & (ys < np.floor(boxes[:, 3, None, None])))
    key = np.where(covers, -depths[:, None, None] * 100 + np.arange(25)[:, None, None], -np.inf)
    winner = key.argmax(0)[covers.any(0)]
    expected = np.unique(winner)
    np.testing.assert_array_equal(visible_boxes(boxes, depths, shape), expected)
    assert 0 < len(expected) < 25


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
