# Camera-only streaming nuScenes at StreamPETR's 704x256 input. Info files: tools/create_data.py.
dataset_type = 'StreamNuScenesDataset'
data_root = 'data/nuscenes/'
point_cloud_range = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
img_size = (256, 704)  # (H, W) fed to the network
# The backbone's real input for latency profiling: six views at img_size.
latency_input_shape = (6, 3, *img_size)
class_names = [
    'car', 'truck', 'construction_vehicle', 'bus', 'trailer', 'barrier', 'motorcycle', 'bicycle',
    'pedestrian', 'traffic_cone'
]
metainfo = dict(classes=class_names)
input_modality = dict(use_lidar=False, use_camera=True)
cameras = ['CAM_FRONT', 'CAM_FRONT_RIGHT', 'CAM_FRONT_LEFT', 'CAM_BACK', 'CAM_BACK_LEFT',
           'CAM_BACK_RIGHT']
data_prefix = dict(pts='samples/LIDAR_TOP', sweeps='sweeps/LIDAR_TOP',
                   **{cam: f'samples/{cam}' for cam in cameras})
backend_args = None

train_pipeline = [
    dict(type='StreamLoadMultiViewImageFromFiles', to_float32=True, num_views=6),
    dict(type='StreamLoadAnnotations3D'),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectNameFilter', classes=class_names),
    dict(type='StreamResizeCropFlipImage', final_dim=img_size, resize_lim=(0.38, 0.55),
         bot_pct_lim=(0.0, 0.0), rot_lim=(0.0, 0.0), rand_flip=True),
    dict(type='StreamGlobalRotScaleTransImage', rot_range=(-0.3925, 0.3925),
         scale_ratio_range=(0.95, 1.05)),
    dict(type='StreamPack3DDetInputs'),
]
test_pipeline = [
    dict(type='StreamLoadMultiViewImageFromFiles', to_float32=True, num_views=6),
    dict(type='StreamResizeCropFlipImage', final_dim=img_size, test_mode=True),
    dict(type='StreamPack3DDetInputs', keys=['img']),
]

# Streaming video training as StreamPETR's (seq_mode=True, queue_length=1, num_frame_losses=1):
# one frame per batch slot and step, each slot walking its sequences in time order; every scene
# is cut into seq_split_num=2 sequences with a memory reset at each start. Testing streams each
# scene whole.
train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='StreamBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='nuscenes_infos_train.pkl',
        data_prefix=data_prefix,
        pipeline=train_pipeline,
        metainfo=metainfo,
        modality=input_modality,
        test_mode=False,
        seq_split_num=2,
        use_valid_flag=False,
        box_type_3d='LiDAR',
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='StreamContiguousSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='nuscenes_infos_val.pkl',
        data_prefix=data_prefix,
        pipeline=test_pipeline,
        metainfo=metainfo,
        modality=input_modality,
        test_mode=True,
        box_type_3d='LiDAR',
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='StreamNuScenesMetric',
    data_root=data_root,
    ann_file=data_root + 'nuscenes_infos_val.pkl',
    metric='bbox',
    backend_args=backend_args)
test_evaluator = val_evaluator
