"""2D auxiliary head (training only), as published (StreamPETR's FocalHead): on each view's
stride-16 map a class + centerness tower and a box + projected-centre tower; boxes are distances
to the four sides (ltrb) of each location, matched one-to-one to the view's 2D boxes."""
import numpy as np
import torch
from mmdet.models.layers.transformer.utils import inverse_sigmoid
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_overlaps, bbox_xyxy_to_cxcywh
from mmdet.utils import reduce_mean
from mmdet3d.registry import MODELS, TASK_UTILS
from mmengine.model import BaseModule, bias_init_with_prob
from torch import nn


def _tower(channels):
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU())


def ltrb_to_cxcywh(loc: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """Locations (..., 2) and side distances (..., 4), all normalised: the box clipped to the
    image, as (cx, cy, w, h)."""
    xyxy = torch.cat([loc - ltrb[..., :2], loc + ltrb[..., 2:]], -1).clamp(0, 1)
    return bbox_xyxy_to_cxcywh(xyxy)


def gaussian_heatmap(shape, centers, radii):
    """(h, w) map holding, at each centre (map cells, truncated to int), a Gaussian of
    sigma = (2r + 1) / 6 over a (2r + 1)^2 window; overlapping ones keep the maximum."""
    h, w = shape
    heat = np.zeros((h, w), dtype=np.float32)
    for (cx, cy), r in zip(centers, radii):
        x, y = int(cx), int(cy)
        if not (0 <= x < w and 0 <= y < h):
            continue
        sigma = (2 * r + 1) / 6
        g = np.exp(-(np.arange(-r, r + 1)[:, None]**2 + np.arange(-r, r + 1)[None]**2) /
                   (2 * sigma * sigma))
        g[g < np.finfo(g.dtype).eps * g.max()] = 0
        top, bottom = min(y, r), min(h - y, r + 1)
        left, right = min(x, r), min(w - x, r + 1)
        window = heat[y - top:y + bottom, x - left:x + right]
        np.maximum(window, g[r - top:r + bottom, r - left:r + right], out=window)
    return heat


@MODELS.register_module()
class StreamFocalHead(BaseModule):

    def __init__(self,
                 num_classes=10,
                 in_channels=256,
                 stride=16,
                 assigner=dict(type='StreamHungarianAssigner2D'),
                 loss_cls=dict(type='mmdet.QualityFocalLoss', use_sigmoid=True, beta=2.0,
                               loss_weight=2.0),
                 loss_centerness=dict(type='mmdet.GaussianFocalLoss', reduction='mean',
                                      loss_weight=1.0),
                 loss_bbox=dict(type='mmdet.L1Loss', loss_weight=5.0),
                 loss_iou=dict(type='mmdet.GIoULoss', loss_weight=2.0),
                 loss_centers=dict(type='mmdet.L1Loss', loss_weight=10.0),
                 init_cfg=None):
        super().__init__(init_cfg)
        self.num_classes, self.stride = num_classes, stride
        self.shared_cls = _tower(in_channels)
        self.shared_reg = _tower(in_channels)
        self.cls = nn.Conv2d(in_channels, num_classes, 1)
        self.centerness = nn.Conv2d(in_channels, 1, 1)
        self.ltrb = nn.Conv2d(in_channels, 4, 1)
        self.center2d = nn.Conv2d(in_channels, 2, 1)
        self.assigner = TASK_UTILS.build(assigner)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_centerness = MODELS.build(loss_centerness)
        self.loss_bbox = MODELS.build(loss_bbox)
        self.loss_iou = MODELS.build(loss_iou)
        self.loss_centers = MODELS.build(loss_centers)

    def init_weights(self):
        super().init_weights()
        nn.init.constant_(self.cls.bias, bias_init_with_prob(0.01))
        nn.init.constant_(self.centerness.bias, bias_init_with_prob(0.01))

    def forward(self, feats):
        """feats (B, N, C, h, w) -> per view (BN, hw, *): class logits, centerness logits,
        boxes as normalised cxcywh and projected centres as normalised (u, v)."""
        b, n, c, h, w = feats.shape
        x = feats.flatten(0, 1)
        ys = (torch.arange(h, device=x.device, dtype=x.dtype) + 0.5) / h
        xs = (torch.arange(w, device=x.device, dtype=x.dtype) + 0.5) / w
        loc = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), -1).view(1, h * w, 2)

        def tokens(t):
            return t.flatten(2).transpose(1, 2)

        cls_feat, reg_feat = self.shared_cls(x), self.shared_reg(x)
        logits, centerness = tokens(self.cls(cls_feat)), tokens(self.centerness(cls_feat))
        boxes = ltrb_to_cxcywh(loc, tokens(self.ltrb(reg_feat)).sigmoid())
        centers = (inverse_sigmoid(loc) + tokens(self.center2d(reg_feat))).sigmoid()
        return logits, centerness, boxes, centers

    def loss(self, feats, batch_gt_2d, pad_shape):
        """batch_gt_2d: per sample an InstanceData with bboxes (xyxy px), labels, centers_2d,
        view_ids; pad_shape (H, W) of the image tensor."""
        logits, centerness, boxes, centers = self(feats)
        n_views, (h, w) = feats.size(1), feats.shape[-2:]
        pad_h, pad_w = pad_shape
        scale = logits.new_tensor([pad_w, pad_h, pad_w, pad_h])
        labels = logits.new_full(logits.shape[:2], self.num_classes, dtype=torch.long)
        box_t, ctr_t, pos, heatmaps = [], [], [], []
        for s, gt in enumerate(batch_gt_2d):
            for v in range(n_views):
                i = s * n_views + v
                sel = gt.view_ids == v
                gt_xyxy, gt_ctr = gt.bboxes[sel].float(), gt.centers_2d[sel].float()
                gt_box = bbox_xyxy_to_cxcywh(gt_xyxy / scale)
                p_idx, g_idx = self.assigner.assign(logits[i].detach(), boxes[i].detach(),
                                                    centers[i].detach(), gt_box,
                                                    gt.labels[sel], gt_ctr / scale[:2], scale)
                labels[i, p_idx] = gt.labels[sel][g_idx]
                box_t.append(gt_box[g_idx])
                ctr_t.append(gt_ctr[g_idx] / scale[:2])
                pos.append(i * logits.size(1) + p_idx)
                heatmaps.append(self._heatmap(gt_xyxy, gt_ctr, (h, w)))
        pos = torch.cat(pos)
        num_pos = float(len(pos))
        pred_box, box_t = boxes.flatten(0, 1)[pos], torch.cat(box_t)
        pred_px, gt_px = bbox_cxcywh_to_xyxy(pred_box) * scale, bbox_cxcywh_to_xyxy(box_t) * scale
        # Quality focal loss: a matched location's class target is its box's IoU.
        quality = logits.new_zeros(labels.numel())
        quality[pos] = bbox_overlaps(gt_px, pred_px.detach(), is_aligned=True)
        losses = dict(loss2d_cls=self.loss_cls(logits.flatten(0, 1),
                                               (labels.flatten(), quality),
                                               avg_factor=max(num_pos, 1.0)))
        num_pos = reduce_mean(logits.new_tensor(num_pos)).clamp(min=1.0).item()
        heat = torch.as_tensor(np.stack(heatmaps), device=logits.device).view_as(centerness)
        losses['loss2d_centerness'] = self.loss_centerness(
            centerness.sigmoid().clamp(1e-4, 1 - 1e-4), heat, avg_factor=num_pos)
        losses['loss2d_bbox'] = self.loss_bbox(pred_box, box_t, avg_factor=num_pos)
        losses['loss2d_iou'] = self.loss_iou(pred_px, gt_px, avg_factor=num_pos)
        losses['loss2d_centers'] = self.loss_centers(centers.flatten(0, 1)[pos], torch.cat(ctr_t),
                                                     avg_factor=num_pos)
        return losses

    def _heatmap(self, gt_xyxy, gt_ctr, shape):
        """Centerness target of one view: a Gaussian at each projected centre whose radius is
        its distance to the nearest box side, in map cells (at least 1)."""
        ctr = gt_ctr.detach().cpu()
        box = gt_xyxy.detach().cpu()
        sides = torch.cat([ctr - box[:, :2], box[:, 2:] - ctr], -1)
        radii = (sides.min(-1).values / self.stride).ceil().clamp(min=1).long().tolist()
        return gaussian_heatmap(shape, (ctr / self.stride).tolist(), radii)
