"""NMS-free decoding: top-k (query, class) pairs by score, boxes inside a centre range."""
import torch
from mmdet3d.registry import TASK_UTILS

from .box_codec import denormalize_bbox


@TASK_UTILS.register_module()
class StreamNMSFreeCoder:

    def __init__(self, post_center_range, max_num: int = 300, score_threshold=None,
                 num_classes: int = 10):
        self.post_center_range = torch.tensor(post_center_range, dtype=torch.float32)
        self.max_num, self.score_threshold, self.num_classes = max_num, score_threshold, num_classes

    def decode(self, cls_logits: torch.Tensor, bbox_codes: torch.Tensor):
        """cls_logits (Q, C), bbox_codes (Q, 10) for one sample -> (boxes (M, 9), scores, labels).

        Boxes are gravity-centred (cx, cy, cz, dx, dy, dz, yaw, vx, vy).
        """
        scores, idx = cls_logits.sigmoid().flatten().topk(min(self.max_num, cls_logits.numel()))
        labels = idx % self.num_classes
        boxes = denormalize_bbox(bbox_codes[idx // self.num_classes])
        rng = self.post_center_range.to(boxes.device)
        keep = (boxes[:, :3] >= rng[:3]).all(1) & (boxes[:, :3] <= rng[3:]).all(1)
        if self.score_threshold is not None:
            keep &= scores > self.score_threshold
        return boxes[keep], scores[keep], labels[keep]
