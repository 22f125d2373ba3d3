from .assigners import StreamHungarianAssigner2D, StreamHungarianAssigner3D
from .cp_fpn import StreamCPFPN
from .focal_head import StreamFocalHead
from .losses import StreamFocalLoss
from .nms_free_coder import StreamNMSFreeCoder
from .streampetr import StreamPETR
from .streampetr_head import StreamPETRHead
from .temporal_decoder import StreamTemporalDecoder

__all__ = [
    'StreamHungarianAssigner2D', 'StreamHungarianAssigner3D', 'StreamCPFPN', 'StreamFocalHead',
    'StreamFocalLoss', 'StreamNMSFreeCoder', 'StreamPETR', 'StreamPETRHead',
    'StreamTemporalDecoder'
]
