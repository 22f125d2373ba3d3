"""CPFPN: mmdet's FPN that builds and runs only the output levels the head reads."""
import torch.nn.functional as F
from mmdet.models.necks import FPN
from mmdet3d.registry import MODELS
from torch import nn


@MODELS.register_module()
class StreamCPFPN(FPN):
    """StreamPETR reads only the stride-16 level; the 3x3 output convs of the other levels are
    replaced by nothing (identity, never called) so they cost neither time nor parameters."""

    def __init__(self, in_channels, out_channels, out_levels=(0, ), **kwargs):
        super().__init__(in_channels, out_channels, num_outs=len(in_channels), **kwargs)
        self.out_levels = tuple(out_levels)
        for i in range(len(self.fpn_convs)):
            if i not in self.out_levels:
                self.fpn_convs[i] = nn.Identity()

    def forward(self, inputs):
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode='nearest')
        return tuple(self.fpn_convs[i](laterals[i]) for i in self.out_levels)
