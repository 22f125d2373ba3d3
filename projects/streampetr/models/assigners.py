"""One-to-one (Hungarian) assignment of predictions to ground truth, for the 3D and 2D heads."""
import torch
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_overlaps
from mmdet3d.registry import TASK_UTILS
from scipy.optimize import linear_sum_assignment

from .box_codec import normalize_bbox


def focal_cost(cls_logits: torch.Tensor, gt_labels: torch.Tensor, alpha=0.25, gamma=2.0,
               eps=1e-12) -> torch.Tensor:
    prob = cls_logits.sigmoid()
    neg = -(1 - prob + eps).log() * (1 - alpha) * prob.pow(gamma)
    pos = -(prob + eps).log() * alpha * (1 - prob).pow(gamma)
    return pos[:, gt_labels] - neg[:, gt_labels]


def hungarian(cost: torch.Tensor):
    """Returns (pred_idx, gt_idx) long tensors on the cost's device."""
    cost = torch.nan_to_num(cost.detach().float(), nan=1e8, posinf=1e8, neginf=-1e8).cpu()
    rows, cols = linear_sum_assignment(cost.numpy())
    dev = cost.new_empty(0).device
    return torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev)


@TASK_UTILS.register_module()
class StreamHungarianAssigner3D:
    """Cost = focal classification cost + L1 on the normalised box code (centre, size, yaw),
    both sides multiplied by the head's code weights first (the published matching cost)."""

    def __init__(self, cls_weight: float = 2.0, reg_weight: float = 0.25, reg_dims: int = 8):
        self.cls_weight, self.reg_weight, self.reg_dims = cls_weight, reg_weight, reg_dims

    def assign(self, bbox_pred, cls_pred, gt_bboxes, gt_labels, code_weights=None):
        """bbox_pred (Q, 10) codes, gt_bboxes (K, 9) raw targets. Returns (pred_idx, gt_idx)."""
        if gt_bboxes.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=bbox_pred.device)
            return empty, empty
        cost = self.cls_weight * focal_cost(cls_pred, gt_labels)
        gt_codes = normalize_bbox(gt_bboxes)
        d = self.reg_dims
        pred, gt = bbox_pred[:, :d], gt_codes[:, :d]
        if code_weights is not None:
            pred, gt = pred * code_weights[:d], gt * code_weights[:d]
        cost = cost + self.reg_weight * torch.cdist(pred, gt, p=1)
        pred_idx, gt_idx = hungarian(cost)
        return pred_idx.to(bbox_pred.device), gt_idx.to(bbox_pred.device)


@TASK_UTILS.register_module()
class StreamHungarianAssigner2D:
    """Cost = focal class cost + L1 on normalised (cx, cy, w, h) + GIoU in pixels + L1 on
    normalised projected centres (the published 2D matching cost)."""

    def __init__(self, cls_weight=2.0, box_weight=5.0, iou_weight=2.0, centers_weight=10.0):
        self.w = (cls_weight, box_weight, iou_weight, centers_weight)

    def assign(self, cls_pred, box_pred, centers_pred, gt_boxes, gt_labels, gt_centers, scale):
        """Boxes normalised cxcywh in [0, 1], centres normalised (u, v); `scale` the padded
        (w, h, w, h) that turns them into pixels."""
        if gt_boxes.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=box_pred.device)
            return empty, empty
        wc, wb, wi, wp = self.w
        giou = bbox_overlaps(bbox_cxcywh_to_xyxy(box_pred) * scale,
                             bbox_cxcywh_to_xyxy(gt_boxes) * scale, mode='giou')
        cost = (wc * focal_cost(cls_pred, gt_labels) + wb * torch.cdist(box_pred, gt_boxes, p=1)
                - wi * giou + wp * torch.cdist(centers_pred, gt_centers, p=1))
        pred_idx, gt_idx = hungarian(cost)
        return pred_idx.to(box_pred.device), gt_idx.to(box_pred.device)
