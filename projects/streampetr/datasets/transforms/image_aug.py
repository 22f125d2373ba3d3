"""StreamPETR's image augmentation: one resize / crop / flip / rotation drawn per frame and
applied to all its views, to the pixels, the camera matrices and the 2D annotations alike."""
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS
from PIL import Image

BOX_KEYS_2D = ('gt_bboxes', 'gt_bboxes_labels', 'centers_2d', 'depths', 'view_ids')
# What StreamPETR's `img.resize(dims)` gets: Pillow's default filter for RGB images, BICUBIC
# (a convolution with support scaled to the downscale, i.e. anti-aliased) since Pillow 7.0.
# Named here so that a future change of Pillow's default does not change our pixels.
RESAMPLE = Image.Resampling.BICUBIC


def _translation(tx, ty):
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def visible_boxes(boxes, depths, shape):
    """Indices (ascending) of the boxes that still own a pixel when all are painted from the
    farthest to the nearest on an image of ``shape`` (H, W), each over the whole pixels it
    covers (corners rounded inwards): StreamPETR's occlusion filter of the 2D targets.

    Unlike StreamPETR's (whose empty map holds 0, the index of the farthest box, so that box is
    always kept while any pixel stays empty), the empty map here owns nothing.
    """
    owner = np.full(shape, -1, dtype=np.int64)
    inner = np.concatenate([np.ceil(boxes[:, :2]), np.floor(boxes[:, 2:])], 1).astype(np.int64)
    for i in np.argsort(-np.asarray(depths), kind='stable'):
        x1, y1, x2, y2 = inner[i]
        owner[y1:y2, x1:x2] = i
    return np.unique(owner[owner >= 0])


@TRANSFORMS.register_module()
class StreamResizeCropFlipImage(BaseTransform):
    """Per frame, draw a resize ratio from ``resize_lim``, a crop to ``final_dim`` (H, W)
    (horizontally random, vertically ``bot_pct_lim`` of the resized height above the bottom), a
    horizontal flip with probability 0.5 if ``rand_flip`` and an angle (degrees,
    counter-clockwise, about the image centre) from ``rot_lim``, and apply them to every view
    (the views must share one size). The draws come in StreamPETR's order, so a numpy seed gives
    its augmentation. Regions outside the source image are zero.

    In test mode the ratio is ``max(H_f / H, W_f / W)`` (the smallest that covers
    ``final_dim``), the crop is centred horizontally at the mean ``bot_pct_lim``, with neither flip
    nor rotation. Pixels are 8-bit as loaded: resized by PIL with ``RESAMPLE`` (as StreamPETR),
    then cropped, flipped (exact) and rotated (PIL, bilinear). Pixel coordinates are continuous
    with the image spanning [0, W] x [0, H].

    ``cam2img`` and ``lidar2img`` become ``A @ M`` (A the frame's affine, with the exact scale
    of the rounded resized size); 2D boxes are mapped, enclosed and clipped to the image, centres
    clipped to it; a box narrower or lower than ``min_box_size`` pixels, or (``filter_occluded``)
    hidden behind nearer boxes of its view (``visible_boxes``), is dropped with its centre,
    depth, label and view id.
    """

    def __init__(self,
                 final_dim=(256, 704),
                 resize_lim=(0.38, 0.55),
                 bot_pct_lim=(0.0, 0.0),
                 rot_lim=(0.0, 0.0),
                 rand_flip=True,
                 test_mode=False,
                 min_box_size=2.0,
                 filter_occluded=True):
        for name, lim in (('resize_lim', resize_lim), ('bot_pct_lim', bot_pct_lim),
                          ('rot_lim', rot_lim)):
            if len(lim) != 2 or lim[0] > lim[1]:
                raise ValueError(f'{name} must be (low, high) with low <= high, got {lim}')
        if resize_lim[0] <= 0 or len(final_dim) != 2 or min(final_dim) <= 0:
            raise ValueError(f'need resize_lim > 0 and final_dim = (H, W) > 0, got resize_lim='
                             f'{resize_lim}, final_dim={final_dim}')
        if min_box_size < 0:
            raise ValueError(f'min_box_size must be >= 0 pixels, got {min_box_size}')
        self.final_dim = tuple(int(d) for d in final_dim)
        self.resize_lim = resize_lim
        self.bot_pct_lim = bot_pct_lim
        self.rot_lim = rot_lim
        self.rand_flip = rand_flip
        self.test_mode = test_mode
        self.min_box_size = min_box_size
        self.filter_occluded = filter_occluded

    def _sample_augmentation(self, h, w):
        """The frame's resized size (w, h), crop origin (x, y), flip and angle (degrees)."""
        fh, fw = self.final_dim
        if self.test_mode:
            resize = max(fh / h, fw / w)
            bot_pct = np.mean(self.bot_pct_lim)
        else:
            resize = np.random.uniform(*self.resize_lim)
            bot_pct = np.random.uniform(*self.bot_pct_lim)
        new_w, new_h = int(w * resize), int(h * resize)
        crop_y = int((1 - bot_pct) * new_h) - fh
        spare_w = max(0, new_w - fw)
        if self.test_mode:
            return (new_w, new_h), (spare_w // 2, crop_y), False, 0.0
        crop_x = int(np.random.uniform(0, spare_w))
        flip = bool(self.rand_flip and np.random.choice([0, 1]))
        angle = float(np.random.uniform(*self.rot_lim))
        return (new_w, new_h), (crop_x, crop_y), flip, angle

    def _affine(self, src_size, new_size, crop, flip, angle):
        """3x3 map from source to final pixel coordinates."""
        (h, w), (new_w, new_h) = src_size, new_size
        fh, fw = self.final_dim
        # The actual scale per axis (the resized size is rounded down), so the affine is exact.
        affine = _translation(-crop[0], -crop[1]) @ np.diag([new_w / w, new_h / h, 1.0])
        if flip:
            affine = np.array([[-1.0, 0.0, fw], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ affine
        if angle:
            c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
            rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
            affine = _translation(fw / 2, fh / 2) @ rot @ _translation(-fw / 2, -fh / 2) @ affine
        return affine

    def _warp_image(self, img, new_size, crop, flip, angle):
        fh, fw = self.final_dim
        pil = Image.fromarray(np.asarray(img).astype(np.uint8))
        pil = pil.resize(new_size, resample=RESAMPLE)
        pil = pil.crop((crop[0], crop[1], crop[0] + fw, crop[1] + fh))  # zero outside
        if flip:
            pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if angle:
            # StreamPETR refuses rotation; bilinear keeps the pixels where the affine puts them.
            pil = pil.rotate(angle, resample=Image.Resampling.BILINEAR)
        return np.asarray(pil, dtype=np.float32)

    def _transform_boxes(self, results, affine):
        """Map every view's 2D boxes and centres; return the keep mask."""
        fh, fw = self.final_dim
        boxes = results['gt_bboxes'].astype(np.float64)
        corners = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]],
                            boxes[:, [2, 3]]], axis=1)                       # (k, 4, 2)
        corners = corners @ affine[:2, :2].T + affine[:2, 2]
        new_boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
        new_boxes[:, 0::2] = new_boxes[:, 0::2].clip(0, fw)
        new_boxes[:, 1::2] = new_boxes[:, 1::2].clip(0, fh)
        centers = results['centers_2d'].astype(np.float64) @ affine[:2, :2].T + affine[:2, 2]
        centers[:, 0] = centers[:, 0].clip(0, fw)
        centers[:, 1] = centers[:, 1].clip(0, fh)
        keep = ((new_boxes[:, 2] - new_boxes[:, 0] >= self.min_box_size)
                & (new_boxes[:, 3] - new_boxes[:, 1] >= self.min_box_size))
        if self.filter_occluded:
            for view in np.unique(results['view_ids']):
                idx = np.flatnonzero(keep & (results['view_ids'] == view))
                visible = np.zeros(len(idx), dtype=bool)
                visible[visible_boxes(new_boxes[idx], results['depths'][idx], (fh, fw))] = True
                keep[idx[~visible]] = False
        results['gt_bboxes'] = new_boxes.astype(np.float32)
        results['centers_2d'] = centers.astype(np.float32)
        return keep

    def transform(self, results):
        sizes = {tuple(img.shape[:2]) for img in results['img']}
        if len(sizes) != 1:
            raise ValueError(f"sample {results.get('token', '?')!r}: views of sizes "
                             f'{sorted(sizes)}; one augmentation per frame needs one size')
        src_size = sizes.pop()
        new_size, crop, flip, angle = self._sample_augmentation(*src_size)
        affine = self._affine(src_size, new_size, crop, flip, angle)
        a4 = np.eye(4)
        a4[:2, :2], a4[:2, 2] = affine[:2, :2], affine[:2, 2]
        results['img'] = [self._warp_image(img, new_size, crop, flip, angle)
                          for img in results['img']]
        results['cam2img'] = [a4 @ m for m in results['cam2img']]
        results['lidar2img'] = [a4 @ m for m in results['lidar2img']]
        results['img_shape'] = [img.shape[:2] for img in results['img']]
        results['pad_shape'] = list(results['img_shape'])
        if 'gt_bboxes' in results:
            keep = self._transform_boxes(results, affine)
            for key in BOX_KEYS_2D:
                results[key] = results[key][keep]
        return results

    def __repr__(self):
        return (f'{self.__class__.__name__}(final_dim={self.final_dim}, resize_lim='
                f'{self.resize_lim}, bot_pct_lim={self.bot_pct_lim}, rot_lim={self.rot_lim}, '
                f'rand_flip={self.rand_flip}, test_mode={self.test_mode}, min_box_size='
                f'{self.min_box_size}, filter_occluded={self.filter_occluded})')
