"""Random six-view frames with a plausible camera rig, for timing and tests without a dataset."""
import numpy as np
import torch
from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
from mmengine.structures import InstanceData

NUM_VIEWS = 6


def camera_rig(h: int, w: int):
    """Six pinhole cameras 60 degrees apart around the LiDAR origin: (lidar2img, cam2img)."""
    k = np.array([[w * 0.7, 0, w / 2, 0], [0, w * 0.7, h / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    lidar2img = []
    for v in range(NUM_VIEWS):
        yaw = v * np.pi / 3
        # LiDAR axes (x forward, y left, z up) -> camera axes (x right, y down, z forward).
        l2c = np.eye(4)
        l2c[:3, :3] = [[np.sin(yaw), -np.cos(yaw), 0], [0, 0, -1], [np.cos(yaw), np.sin(yaw), 0]]
        lidar2img.append(k @ l2c)
    return lidar2img, [k] * NUM_VIEWS


def fake_frame(h: int, w: int, index: int = 0, scene: str = 'fake', prev_exists=None,
               seed: int = 0):
    """One frame as a dataloader yields it: `inputs['img']` and a `Det3DDataSample`."""
    gen = torch.Generator().manual_seed(seed + index)
    lidar2img, cam2img = camera_rig(h, w)
    ds = Det3DDataSample()
    ds.set_metainfo(dict(
        lidar2img=lidar2img, cam2img=cam2img, lidar2global=np.eye(4),
        timestamp=1.5e9 + 0.5 * index, scene_token=scene,
        prev_exists=index > 0 if prev_exists is None else prev_exists,
        img_shape=[(h, w)] * NUM_VIEWS, pad_shape=[(h, w)] * NUM_VIEWS,
        sample_idx=index))
    img = torch.rand(NUM_VIEWS, 3, h, w, generator=gen) * 255
    return dict(inputs=dict(img=[img]), data_samples=[ds])


def add_fake_ground_truth(frame):
    """Two 3D boxes (a car, a pedestrian) and one 2D box in view 0, for loss computations."""
    ds = frame['data_samples'][0]
    gt = InstanceData()
    gt.bboxes_3d = LiDARInstance3DBoxes(
        torch.tensor([[8.0, 1.0, -1.5, 4.2, 1.9, 1.6, 0.3, 2.0, 0.0],
                      [3.0, -6.0, -1.0, 0.6, 0.7, 1.8, 1.2, 0.0, 0.5]]), box_dim=9)
    gt.labels_3d = torch.tensor([0, 8])
    ds.gt_instances_3d = gt
    gt2d = InstanceData()
    gt2d.bboxes = torch.tensor([[40.0, 30.0, 90.0, 70.0]])
    gt2d.labels = torch.tensor([0])
    gt2d.centers_2d = torch.tensor([[65.0, 50.0]])
    gt2d.depths = torch.tensor([8.0])
    gt2d.view_ids = torch.tensor([0])
    ds.gt_instances = gt2d
    return frame
