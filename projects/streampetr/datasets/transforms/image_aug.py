"""StreamPETR's per-view image augmentation, applied as one 2D affine to the pixels, the camera
matrices and the 2D annotations so that they stay consistent."""
import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet3d.registry import TRANSFORMS

BOX_KEYS_2D = ('gt_bboxes', 'gt_bboxes_labels', 'centers_2d', 'depths', 'view_ids')


def _translation(tx, ty):
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


@TRANSFORMS.register_module()
class StreamResizeCropFlipImage(BaseTransform):
    """Resize each view by a ratio drawn from ``resize_lim``, crop it to ``final_dim`` (H, W)
    (horizontally random, vertically ``bot_pct_lim`` of the resized height above the bottom),
    flip it horizontally with probability 0.5 if ``rand_flip``, rotate it by an angle (degrees)
    drawn from ``rot_lim`` about the centre. Regions outside the source image are zero.

    In test mode the ratio is ``max(H_f / H, W_f / W)`` (the smallest that covers
    ``final_dim``), the crop is centred horizontally at the mean ``bot_pct_lim``, with neither flip
    nor rotation. Pixel coordinates are continuous with the image spanning [0, W] x [0, H].

    ``cam2img`` and ``lidar2img`` become ``A @ M`` (A the view's affine); 2D boxes are mapped,
    enclosed, clipped, and dropped with their centre, depth, label and view id when narrower or
    lower than 1 pixel or when their centre leaves the image.
    """

    def __init__(self,
                 final_dim=(256, 704),
                 resize_lim=(0.38, 0.55),
                 bot_pct_lim=(0.0, 0.0),
                 rot_lim=(0.0, 0.0),
                 rand_flip=True,
                 test_mode=False):
        for name, lim in (('resize_lim', resize_lim), ('bot_pct_lim', bot_pct_lim),
                          ('rot_lim', rot_lim)):
            if len(lim) != 2 or lim[0] > lim[1]:
                raise ValueError(f'{name} must be (low, high) with low <= high, got {lim}')
        if resize_lim[0] <= 0 or len(final_dim) != 2 or min(final_dim) <= 0:
            raise ValueError(f'need resize_lim > 0 and final_dim = (H, W) > 0, got resize_lim='
                             f'{resize_lim}, final_dim={final_dim}')
        self.final_dim = tuple(int(d) for d in final_dim)
        self.resize_lim = resize_lim
        self.bot_pct_lim = bot_pct_lim
        self.rot_lim = rot_lim
        self.rand_flip = rand_flip
        self.test_mode = test_mode

    def _sample_affine(self, h, w):
        """The view's resized size (w, h) and the 3x3 affine from source to final pixels."""
        fh, fw = self.final_dim
        if self.test_mode:
            resize, bot_pct, flip, angle = max(fh / h, fw / w), np.mean(self.bot_pct_lim), \
                False, 0.0
        else:
            resize = np.random.uniform(*self.resize_lim)
            bot_pct = np.random.uniform(*self.bot_pct_lim)
            flip = self.rand_flip and np.random.rand() < 0.5
            angle = np.random.uniform(*self.rot_lim)
        new_w, new_h = int(w * resize), int(h * resize)
        crop_y = int((1 - bot_pct) * new_h) - fh
        spare_w = max(0, new_w - fw)
        crop_x = spare_w // 2 if self.test_mode else int(np.random.uniform(0, spare_w))
        # The actual scale per axis (the resized size is rounded down), so the affine is exact.
        affine = _translation(-crop_x, -crop_y) @ np.diag([new_w / w, new_h / h, 1.0])
        if flip:
            affine = np.array([[-1.0, 0.0, fw], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ affine
        if angle:
            c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
            rot = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
            affine = _translation(fw / 2, fh / 2) @ rot @ _translation(-fw / 2, -fh / 2) @ affine
        return (new_w, new_h), affine

    def _warp_image(self, img, new_size, affine):
        h, w = img.shape[:2]
        fh, fw = self.final_dim
        # INTER_AREA anti-aliases downscaling; the rest is one warp. OpenCV puts pixel centres on
        # integers, hence the half-pixel shifts around the crop/flip/rotation part.
        interp = cv2.INTER_AREA if new_size[0] < w else cv2.INTER_LINEAR
        resized = cv2.resize(img, new_size, interpolation=interp)
        post = affine @ np.diag([w / new_size[0], h / new_size[1], 1.0])
        warp = _translation(-0.5, -0.5) @ post @ _translation(0.5, 0.5)
        return cv2.warpAffine(resized, warp[:2], (fw, fh), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

    def _transform_boxes(self, results, view_id, affine):
        """Map the view's 2D boxes and centres; return the keep mask over that view's boxes."""
        sel = results['view_ids'] == view_id
        fh, fw = self.final_dim
        boxes = results['gt_bboxes'][sel].astype(np.float64)
        corners = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]],
                            boxes[:, [2, 3]]], axis=1)                       # (k, 4, 2)
        corners = corners @ affine[:2, :2].T + affine[:2, 2]
        new_boxes = np.concatenate([corners.min(1), corners.max(1)], axis=1)
        new_boxes[:, 0::2] = new_boxes[:, 0::2].clip(0, fw)
        new_boxes[:, 1::2] = new_boxes[:, 1::2].clip(0, fh)
        centers = results['centers_2d'][sel].astype(np.float64) @ affine[:2, :2].T + affine[:2, 2]
        keep = ((new_boxes[:, 2] - new_boxes[:, 0] >= 1) & (new_boxes[:, 3] - new_boxes[:, 1] >= 1)
                & (centers[:, 0] >= 0) & (centers[:, 0] < fw)
                & (centers[:, 1] >= 0) & (centers[:, 1] < fh))
        results['gt_bboxes'][sel] = new_boxes
        results['centers_2d'][sel] = centers
        return sel, keep

    def transform(self, results):
        has_boxes = 'gt_bboxes' in results
        if has_boxes:
            results['gt_bboxes'] = results['gt_bboxes'].astype(np.float32, copy=True)
            results['centers_2d'] = results['centers_2d'].astype(np.float32, copy=True)
            keep_all = np.ones(len(results['gt_bboxes']), dtype=bool)
        imgs = []
        for i, img in enumerate(results['img']):
            new_size, affine = self._sample_affine(*img.shape[:2])
            imgs.append(self._warp_image(img, new_size, affine))
            a4 = np.eye(4)
            a4[:2, :2], a4[:2, 2] = affine[:2, :2], affine[:2, 2]
            results['cam2img'][i] = a4 @ results['cam2img'][i]
            results['lidar2img'][i] = a4 @ results['lidar2img'][i]
            if has_boxes:
                sel, keep = self._transform_boxes(results, i, affine)
                keep_all[sel] = keep
        results['img'] = imgs
        results['img_shape'] = [img.shape[:2] for img in imgs]
        results['pad_shape'] = list(results['img_shape'])
        if has_boxes:
            for key in BOX_KEYS_2D:
                results[key] = results[key][keep_all]
        return results

    def __repr__(self):
        return (f'{self.__class__.__name__}(final_dim={self.final_dim}, resize_lim='
                f'{self.resize_lim}, bot_pct_lim={self.bot_pct_lim}, rot_lim={self.rot_lim}, '
                f'rand_flip={self.rand_flip}, test_mode={self.test_mode})')
