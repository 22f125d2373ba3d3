# The small config with its ResNet-50 frozen at random weights, for learning curves on the CPU
# (`tools/bench_learning_curve.py`; docs/demo.md): the backbone's BN statistics are calibrated on
# 30 training batches and its outputs cached per image (FrozenBackboneFeatureCache), so after
# one pass over the training set a step trains the neck and the heads only (0.5 s instead of
# 2.5 s here). That needs a deterministic train pipeline: the test-time resize, no flip. The
# query embedding and position encoder stay at their random weights (trained, they collapse the
# queries, docs/demo.md), and the rest learns at 1e-3.
_base_ = ['./streampetr_r50_small_cpu.py']

model = dict(img_backbone=dict(frozen_stages=4, norm_eval=True))

# resize_lim 0.64 of the 400x225 images is the test-time ratio: a crop without random offset.
train_pipeline = [
    dict(type='StreamLoadMultiViewImageFromFiles', to_float32=True, num_views=6),
    dict(type='StreamLoadAnnotations3D'),
    dict(type='ObjectRangeFilter', point_cloud_range={{_base_.point_cloud_range}}),
    dict(type='ObjectNameFilter', classes={{_base_.class_names}}),
    dict(type='StreamResizeCropFlipImage', final_dim={{_base_.img_size}},
         resize_lim=(0.64, 0.64), rand_flip=False),
    dict(type='StreamPack3DDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
custom_hooks = [dict(type='FrozenBackboneFeatureCache', calib_batches=30)]

optim_wrapper = dict(optimizer=dict(lr=1e-3), paramwise_cfg=dict(custom_keys={
    'img_backbone': dict(lr_mult=1.0),
    'pts_bbox_head.query_embedding': dict(lr_mult=0.0, decay_mult=0.0),
    'pts_bbox_head.position_encoder': dict(lr_mult=0.0, decay_mult=0.0)}))
