"""Sigmoid focal loss in plain PyTorch.

mmdet's FocalLoss switches to mmcv's CUDA kernel whenever the input is on a GPU; the mmcv builds this
project uses carry no CUDA kernels, and the PyTorch form computes the same loss.
"""
from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss
from mmdet3d.registry import MODELS
from torch import nn
import torch.nn.functional as F


@MODELS.register_module()
class StreamFocalLoss(nn.Module):

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25, reduction: str = 'mean',
                 loss_weight: float = 1.0):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha
        self.reduction, self.loss_weight = reduction, loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None):
        """pred (N, C) logits; target (N,) labels in [0, C], where C is background."""
        num_classes = pred.size(1)
        one_hot = F.one_hot(target, num_classes=num_classes + 1)[:, :num_classes]
        if weight is not None and weight.dim() == 1:
            weight = weight[:, None]
        return self.loss_weight * py_sigmoid_focal_loss(
            pred, one_hot.type_as(pred), weight, gamma=self.gamma, alpha=self.alpha,
            reduction=self.reduction, avg_factor=avg_factor)
