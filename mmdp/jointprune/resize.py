"""Change the camera image size of a batch that is already loaded: the images, the camera
matrices (`lidar2img`, `cam2img`) and the 2D ground truth, consistently.

Pixel coordinates span [0, W] x [0, H] (the convention of `StreamResizeCropFlipImage`), so a
resize from (H, W) to (H', W') is the affine diag(W'/W, H'/H): it scales the first two rows of
the camera matrices and the 2D boxes and centres. `F.interpolate` with `align_corners=False`
follows the same convention; `antialias=True` low-pass filters a downscale as the pipeline's
Pillow BICUBIC resize does. The 3D position embedding and the feature-map size follow in the model.
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F


def resize_images(imgs: torch.Tensor, size) -> torch.Tensor:
    """(..., C, H, W) -> (..., C, H', W'), in the input's dtype (integers rounded)."""
    size = tuple(int(s) for s in size)
    if tuple(imgs.shape[-2:]) == size:
        return imgs
    flat = imgs.reshape(-1, *imgs.shape[-3:])
    out = F.interpolate(flat.float(), size=size, mode='bilinear', align_corners=False,
                        antialias=True)
    if not imgs.is_floating_point():
        out = out.round().clamp(torch.iinfo(imgs.dtype).min, torch.iinfo(imgs.dtype).max)
    return out.to(imgs.dtype).reshape(*imgs.shape[:-2], *size)


def _scaled_matrices(mats, sx: float, sy: float) -> list:
    scale = np.diag([sx, sy, 1.0, 1.0])
    out = []
    for m in mats:
        m = np.asarray(m, dtype=np.float64)
        s = scale[:m.shape[0], :m.shape[0]]
        out.append(s @ m)
    return out


def resize_sample(data_sample, old_size, new_size):
    """A copy of `data_sample` whose metainfo and 2D ground truth describe images resized from
    `old_size` to `new_size` (both (H, W))."""
    (h, w), (nh, nw) = old_size, new_size
    sx, sy = nw / w, nh / h
    sample = copy.deepcopy(data_sample)  # `clone` is shallow: it would share gt_instances
    meta = sample.metainfo
    update = {}
    for key in ('lidar2img', 'cam2img'):
        if key in meta:
            update[key] = _scaled_matrices(meta[key], sx, sy)
    for key in ('img_shape', 'pad_shape', 'batch_input_shape'):
        if key in meta:
            value = meta[key]
            nested = isinstance(value, (list, tuple)) and value and isinstance(
                value[0], (list, tuple))
            update[key] = [tuple(new_size)] * len(value) if nested else tuple(new_size)
    sample.set_metainfo(update)
    if 'gt_instances' in sample:
        gt = sample.gt_instances
        if 'bboxes' in gt:
            gt.bboxes = gt.bboxes * gt.bboxes.new_tensor([sx, sy, sx, sy])
        if 'centers_2d' in gt:
            gt.centers_2d = gt.centers_2d * gt.centers_2d.new_tensor([sx, sy])
    return sample


def resize_batch(imgs: torch.Tensor, data_samples: list, size):
    """Images (B, N, C, H, W) and their data samples at `size` (H', W'); new objects, the
    inputs are left as they were."""
    old = tuple(imgs.shape[-2:])
    size = tuple(int(s) for s in size)
    if old == size:
        return imgs, data_samples
    return resize_images(imgs, size), [resize_sample(ds, old, size) for ds in data_samples]


def resize_data_batch_(data_batch: dict, size) -> None:
    """In place on a dataloader batch (before the data preprocessor): each sample's (N, C, H, W)
    images and its data sample."""
    imgs = data_batch['inputs']['img']
    size = tuple(int(s) for s in size)
    for i, img in enumerate(imgs):
        old = tuple(img.shape[-2:])
        if old != size:
            imgs[i] = resize_images(img, size)
            data_batch['data_samples'][i] = resize_sample(data_batch['data_samples'][i], old,
                                                          size)
