"""The two graphs StreamPETR is deployed as (the structure of NVIDIA's DL4AGX StreamPETR
TensorRT sample): the image backbone and neck, and one head step with the memory queue as
explicit inputs and outputs. The host computes the frame's geometry in float64 (absolute
timestamps and poses do not fit float32) with the detector's own bookkeeping."""
from torch import nn

# Per-frame inputs of the head graph, after the features (see StreamPETRHead.step).
FRAME_INPUTS = ('img2lidar', 'focal', 'valid', 'ego_motion', 'dt')


class BackboneNeck(nn.Module):
    """imgs (B, N, 3, H, W), normalised -> feats (B, N, C, H/16, W/16)."""

    def __init__(self, detector):
        super().__init__()
        self.detector = detector

    def forward(self, imgs):
        return self.detector.extract_feat(imgs)


class HeadStep(nn.Module):
    """(feats, img2lidar, focal, valid, ego_motion, dt, *memory) -> (last layer's class logits,
    box codes, *next memory); `valid` is 1.0 where the slot continues the previous frame."""

    def __init__(self, head, pad_shape):
        super().__init__()
        self.head, self.pad_shape = head, tuple(pad_shape)

    def forward(self, feats, img2lidar, focal, valid, ego_motion, dt, *memory):
        frame = dict(img2lidar=img2lidar, focal=focal, valid=valid, ego_motion=ego_motion,
                     dt=dt, pad_shape=self.pad_shape)
        cls_scores, bbox_preds, _, memory = self.head.step(
            feats, frame, dict(zip(self.head.MEMORY, memory)))
        return (cls_scores[-1], bbox_preds[-1], *(memory[name] for name in self.head.MEMORY))


def head_inputs(frame, memory, head):
    """The head graph's inputs, in order, as tensors."""
    return (*(frame[k].float() for k in FRAME_INPUTS),
            *(memory[name] for name in head.MEMORY))
