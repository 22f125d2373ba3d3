# The dense model's code at CPU-demo scale: small images, fewer queries, a shorter memory and
# decoder, a short schedule, on the synthetic nuScenes of tools/make_synthetic_nuscenes.py made
# with `--image-size 400 225` (the resize ratios below assume that size).
#
# Differences from the full recipe, all because the backbone starts from random weights here
# (no ImageNet checkpoint is downloaded) and the run must finish in minutes on 2 CPU cores:
# - the backbone's BN layers train and use batch statistics (the full config freezes them,
#   norm_eval, as fine-tuning a pretrained backbone wants; frozen at their initial statistics
#   they would leave random activations unnormalised, 25x larger by layer4);
# - the backbone learns at the head's rate (the full recipe slows a pretrained one down);
# - no global rotation / scale augmentation, no GridMask and a narrow resize range: fewer
#   things to learn in a few hundred iterations.
_base_ = ['./streampetr_r50_704_dense.py']

data_root = 'data/synthetic_nuscenes/'
point_cloud_range = {{_base_.point_cloud_range}}
class_names = {{_base_.class_names}}
img_size = (96, 256)
latency_input_shape = (6, 3, *img_size)
recipe = None
max_iters = 250
warmup_iters = 50

model = dict(
    grid_mask=None,
    img_backbone=dict(norm_cfg=dict(type='BN2d', requires_grad=True), norm_eval=False),
    pts_bbox_head=dict(
        num_query=60, num_propagated=16, memory_len=64, topk_proposals=16, depth_num=16,
        decoder=dict(num_layers=3, ffn_dims=512),
        bbox_coder=dict(max_num=100)))

train_pipeline = [
    dict(type='StreamLoadMultiViewImageFromFiles', to_float32=True, num_views=6),
    dict(type='StreamLoadAnnotations3D'),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectNameFilter', classes=class_names),
    dict(type='StreamResizeCropFlipImage', final_dim=img_size, resize_lim=(0.62, 0.68),
         rand_flip=True),
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

optim_wrapper = dict(optimizer=dict(lr=4e-4),
                     paramwise_cfg=dict(custom_keys={'img_backbone': dict(lr_mult=1.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup_iters, end=max_iters,
         T_max=max_iters - warmup_iters, eta_min_ratio=0.05),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
auto_scale_lr = dict(enable=False)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=max_iters))
