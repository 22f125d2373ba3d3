"""The StreamPETR detector: multi-view image backbone and neck, the temporal 3D head and the 2D
auxiliary head, trained and evaluated in streaming mode (one frame per batch slot and step)."""
from typing import Dict, List

import numpy as np
import torch
from mmdet3d.models.detectors.base import Base3DDetector
from mmdet3d.registry import MODELS

from .box_codec import boxes_to_targets
from .grid_mask import GridMask


@MODELS.register_module()
class StreamPETR(Base3DDetector):

    def __init__(self, img_backbone, img_neck, pts_bbox_head, img_roi_head=None,
                 max_time_gap=2.0, grid_mask=None, data_preprocessor=None, init_cfg=None):
        """grid_mask: None (off) or the arguments of `GridMask`, applied to the normalised
        images in training only (the published recipe: dict(prob=0.7))."""
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.grid_mask = GridMask(**grid_mask) if grid_mask is not None else None
        # A slot whose previous frame is older than this (seconds), or newer, starts afresh.
        self.max_time_gap = max_time_gap
        self.img_backbone = MODELS.build(img_backbone)
        self.img_neck = MODELS.build(img_neck)
        self.pts_bbox_head = MODELS.build(pts_bbox_head)
        self.img_roi_head = MODELS.build(img_roi_head) if img_roi_head else None
        # Per batch slot: the scene, pose and time of the frame the memory was last updated on.
        self._slots = None

    def extract_feat(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, H, W) -> (B, N, C, H/16, W/16) from the neck's first output level."""
        b, n = imgs.shape[:2]
        imgs = imgs.flatten(0, 1)
        if self.grid_mask is not None:
            imgs = self.grid_mask(imgs)  # a no-op unless training
        feats = self.img_neck(self.img_backbone(imgs))[0]
        # float(): the heads run in fp32 (see `_heads_fp32`), whatever autocast gave the neck.
        return feats.float().view(b, n, *feats.shape[1:])

    @staticmethod
    def _heads_fp32(feats: torch.Tensor):
        """The published model autocasts only backbone and neck (`auto_fp16(out_fp32=True)` on
        its extract_feat); under `--amp` the heads stay in fp32 as they were trained."""
        return torch.autocast(feats.device.type, enabled=False)

    def _frame(self, imgs, data_samples) -> Dict:
        """Camera geometry and the memory bookkeeping of this step, as tensors."""
        metas = [ds.metainfo for ds in data_samples]
        device = imgs.device
        lidar2img = torch.as_tensor(np.stack([np.stack(m['lidar2img']) for m in metas]),
                                    dtype=torch.float64)
        cam2img = np.stack([np.stack([np.asarray(k)[:2, :2] for k in m['cam2img']])
                            for m in metas])
        focal = torch.as_tensor(np.stack([cam2img[..., 0, 0], cam2img[..., 1, 1]], -1),
                                dtype=torch.float32)
        lidar2global = [np.asarray(m['lidar2global'], dtype=np.float64) for m in metas]
        stamps = [float(m['timestamp']) for m in metas]
        scenes = [m['scene_token'] for m in metas]
        same_batch = self._slots is not None and len(self._slots) == len(metas)
        valid, motion, dt = [], [], []
        for i, m in enumerate(metas):
            prev = self._slots[i] if same_batch else None
            # float64 difference: absolute stamps are ~1.5e9 s
            gap = stamps[i] - prev['time'] if prev else 0.0
            ok = bool(prev and m.get('prev_exists', True) and prev['scene'] == scenes[i]
                      and 0 < gap <= self.max_time_gap)
            valid.append(ok)
            if ok:
                motion.append(np.linalg.inv(lidar2global[i]) @ prev['pose'])
                dt.append(gap)
            else:
                motion.append(np.eye(4))
                dt.append(0.0)
        self._slots = [dict(scene=s, pose=p, time=t)
                       for s, p, t in zip(scenes, lidar2global, stamps)]
        return dict(
            lidar2img=lidar2img.float().to(device),
            img2lidar=torch.linalg.inv(lidar2img).float().to(device),
            focal=focal.to(device),
            pad_shape=tuple(imgs.shape[-2:]),
            valid=torch.tensor(valid, device=device),
            ego_motion=torch.as_tensor(np.stack(motion), dtype=torch.float32, device=device),
            dt=torch.tensor(dt, dtype=torch.float32, device=device))

    def reset_memory(self):
        self._slots = None
        self.pts_bbox_head.reset_memory()

    def loss(self, batch_inputs_dict: dict, batch_data_samples: List) -> Dict[str, torch.Tensor]:
        imgs = batch_inputs_dict['imgs']
        feats = self.extract_feat(imgs)
        frame = self._frame(imgs, batch_data_samples)
        gt_3d = [ds.gt_instances_3d for ds in batch_data_samples]
        gt_bboxes = [boxes_to_targets(g.bboxes_3d).to(imgs.device) for g in gt_3d]
        gt_labels = [g.labels_3d.to(imgs.device) for g in gt_3d]
        with self._heads_fp32(feats):
            losses = self.pts_bbox_head.loss(feats, frame, gt_bboxes, gt_labels)
            if self.img_roi_head is not None:
                gt_2d = [ds.gt_instances.to(imgs.device) for ds in batch_data_samples]
                losses.update(self.img_roi_head.loss(feats, gt_2d, frame['pad_shape']))
        return losses

    def predict(self, batch_inputs_dict: dict, batch_data_samples: List) -> List:
        imgs = batch_inputs_dict['imgs']
        feats = self.extract_feat(imgs)
        with self._heads_fp32(feats):
            results = self.pts_bbox_head.predict(feats, self._frame(imgs, batch_data_samples))
        return self.add_pred_to_datasample(batch_data_samples, results)

    def _forward(self, batch_inputs_dict: dict, batch_data_samples: List):
        imgs = batch_inputs_dict['imgs']
        feats = self.extract_feat(imgs)
        with self._heads_fp32(feats):
            return self.pts_bbox_head(feats, self._frame(imgs, batch_data_samples))[:2]
