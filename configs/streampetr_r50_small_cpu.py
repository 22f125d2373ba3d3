# The dense model's code at CPU-test scale: small images, fewer queries, a shorter memory and
# decoder, a few iterations, on the synthetic nuScenes of tools/make_synthetic_nuscenes.py made
# with `--image-size 400 225` (the resize ratios below assume that size).
_base_ = ['./streampetr_r50_704_dense.py']

data_root = 'data/synthetic_nuscenes/'
point_cloud_range = {{_base_.point_cloud_range}}
class_names = {{_base_.class_names}}
img_size = (96, 256)
latency_input_shape = (6, 3, *img_size)
recipe = None
max_iters = 20

model = dict(
    pts_bbox_head=dict(
        num_query=60, num_propagated=16, memory_len=64, topk_proposals=16, depth_num=16,
        dn_groups=3,
        decoder=dict(num_layers=2, ffn_dims=256),
        bbox_coder=dict(max_num=100)))

train_pipeline = [
    dict(type='StreamLoadMultiViewImageFromFiles', to_float32=True, num_views=6),
    dict(type='StreamLoadAnnotations3D'),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectNameFilter', classes=class_names),
    dict(type='StreamResizeCropFlipImage', final_dim=img_size, resize_lim=(0.6, 0.7),
         rand_flip=True),
    dict(type='StreamGlobalRotScaleTransImage', rot_range=(-0.3925, 0.3925),
         scale_ratio_range=(0.95, 1.05)),
    dict(type='StreamPack3DDetInputs'),
]
test_pipeline = [
    dict(type='StreamLoadMultiViewImageFromFiles', to_float32=True, num_views=6),
    dict(type='StreamResizeCropFlipImage', final_dim=img_size, test_mode=True),
    dict(type='StreamPack3DDetInputs', keys=['img']),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(data_root=data_root, ann_file=data_root + 'nuscenes_infos_val.pkl')
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=5)]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
auto_scale_lr = dict(enable=False)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=max_iters))
