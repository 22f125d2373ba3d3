"""2D auxiliary head (training only): per-location class, 2D box and projected 3D centre on each
view's stride-16 map, matched one-to-one to the view's 2D boxes."""
import torch
from mmdet.models.layers.transformer.utils import inverse_sigmoid
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmdet.utils import reduce_mean
from mmdet3d.registry import MODELS, TASK_UTILS
from mmengine.model import BaseModule, bias_init_with_prob
from torch import nn


def _conv_branch(channels, out_channels):
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels),
        nn.ReLU(inplace=True), nn.Conv2d(channels, out_channels, 1))


@MODELS.register_module()
class StreamFocalHead(BaseModule):

    def __init__(self,
                 num_classes=10,
                 in_channels=256,
                 assigner=dict(type='StreamHungarianAssigner2D'),
                 loss_cls=dict(type='StreamFocalLoss', gamma=2.0, alpha=0.25, loss_weight=2.0),
                 loss_bbox=dict(type='mmdet.L1Loss', loss_weight=5.0),
                 loss_iou=dict(type='mmdet.GIoULoss', loss_weight=2.0),
                 loss_centers=dict(type='mmdet.L1Loss', loss_weight=10.0),
                 init_cfg=None):
        super().__init__(init_cfg)
        self.num_classes = num_classes
        self.cls = _conv_branch(in_channels, num_classes)
        self.box = _conv_branch(in_channels, 4)  # (dcx, dcy, w, h) in normalised image units
        self.centers = _conv_branch(in_channels, 2)
        self.assigner = TASK_UTILS.build(assigner)
        self.loss_cls = MODELS.build(loss_cls)
        self.loss_bbox = MODELS.build(loss_bbox)
        self.loss_iou = MODELS.build(loss_iou)
        self.loss_centers = MODELS.build(loss_centers)

    def init_weights(self):
        super().init_weights()
        nn.init.constant_(self.cls[-1].bias, bias_init_with_prob(0.01))

    def forward(self, feats):
        """feats (B, N, C, h, w) -> per view: logits (BN, hw, C), boxes and centres (BN, hw, *)
        as normalised cxcywh / (u, v), predicted as offsets from each location."""
        b, n, c, h, w = feats.shape
        x = feats.flatten(0, 1)
        ys = (torch.arange(h, device=x.device) + 0.5) / h
        xs = (torch.arange(w, device=x.device) + 0.5) / w
        loc = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), -1).view(1, h * w, 2)
        logits = self.cls(x).flatten(2).transpose(1, 2)
        box = self.box(x).flatten(2).transpose(1, 2)
        centers = self.centers(x).flatten(2).transpose(1, 2)
        box = torch.cat([(inverse_sigmoid(loc) + box[..., :2]).sigmoid(), box[..., 2:].sigmoid()], -1)
        centers = (inverse_sigmoid(loc) + centers).sigmoid()
        return logits, box, centers

    def loss(self, feats, batch_gt_2d, pad_shape):
        """batch_gt_2d: per sample an InstanceData with bboxes (xyxy px), labels, centers_2d,
        view_ids; pad_shape (H, W) of the image tensor."""
        logits, boxes, centers = self(feats)
        n_views = feats.size(1)
        pad_h, pad_w = pad_shape
        scale = logits.new_tensor([pad_w, pad_h, pad_w, pad_h])
        labels = logits.new_full(logits.shape[:2], self.num_classes, dtype=torch.long)
        box_t, ctr_t, pos = [], [], []
        for s, gt in enumerate(batch_gt_2d):
            for v in range(n_views):
                i = s * n_views + v
                sel = gt.view_ids == v
                gt_box = bbox_xyxy_to_cxcywh(gt.bboxes[sel].float()) / scale
                gt_ctr = gt.centers_2d[sel].float() / scale[:2]
                p_idx, g_idx = self.assigner.assign(logits[i].detach(), boxes[i].detach(),
                                                    centers[i].detach(), gt_box,
                                                    gt.labels[sel], gt_ctr)
                labels[i, p_idx] = gt.labels[sel][g_idx]
                box_t.append(gt_box[g_idx])
                ctr_t.append(gt_ctr[g_idx])
                pos.append(i * logits.size(1) + p_idx)
        pos = torch.cat(pos)
        num_pos = reduce_mean(logits.new_tensor(float(len(pos)))).clamp(min=1.0)
        losses = dict(loss2d_cls=self.loss_cls(logits.flatten(0, 1), labels.flatten(),
                                               avg_factor=num_pos))
        pred_box = boxes.flatten(0, 1)[pos]
        box_t = torch.cat(box_t)
        losses['loss2d_bbox'] = self.loss_bbox(pred_box, box_t, avg_factor=num_pos)
        losses['loss2d_iou'] = self.loss_iou(bbox_cxcywh_to_xyxy(pred_box),
                                             bbox_cxcywh_to_xyxy(box_t), avg_factor=num_pos)
        losses['loss2d_centers'] = self.loss_centers(centers.flatten(0, 1)[pos], torch.cat(ctr_t),
                                                     avg_factor=num_pos)
        return losses
