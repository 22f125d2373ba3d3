"""Box encoding shared by the head's targets and the decoder.

Code: (cx, cy, cz, log dx, log dy, log dz, sin yaw, cos yaw, vx, vy) with the gravity centre and the
MMDetection3D 1.x LiDAR box convention (dims along x, y, z of the box frame).
"""
import torch
from mmdet3d.structures import LiDARInstance3DBoxes


def boxes_to_targets(boxes: LiDARInstance3DBoxes) -> torch.Tensor:
    """(K, 9) boxes -> (K, 9) raw targets: gravity centre, dims, yaw, velocity."""
    return torch.cat([boxes.gravity_center, boxes.tensor[:, 3:]], dim=1)


def normalize_bbox(bboxes: torch.Tensor) -> torch.Tensor:
    cx, cy, cz, dx, dy, dz, yaw = bboxes[:, :7].unbind(-1)
    out = [cx, cy, cz, dx.log(), dy.log(), dz.log(), yaw.sin(), yaw.cos()]
    if bboxes.size(-1) > 7:
        out += [bboxes[:, 7], bboxes[:, 8]]
    return torch.stack(out, dim=-1)


def denormalize_bbox(codes: torch.Tensor) -> torch.Tensor:
    yaw = torch.atan2(codes[..., 6], codes[..., 7])
    dims = codes[..., 3:6].exp()
    out = [codes[..., :3], dims, yaw[..., None]]
    if codes.size(-1) > 8:
        out.append(codes[..., 8:10])
    return torch.cat(out, dim=-1)
