# StreamPETR's 428q_nui_60e schedule (stream_petr_r50_flash_704_bs2_seq_428q_nui_60e.py): AdamW
# 4e-4 for 8 GPUs x 2 samples, backbone lr x0.1, weight decay 0.01, 500 linear warm-up
# iterations from 1/3, cosine to 1e-3 of the lr, gradient clipping at 35, 60 epochs of
# iteration-based streaming training. fp32 here: the fp16 recipe (loss scale) is
# configs/streampetr_r50_cpfpn_8xb2-amp-60e_nus-3d-704x256.py, or `tools/train.py --amp`.
# `recipe` is turned into iterations for the actual number of GPUs by tools/train.py
# (epochs x (samples // total batch), as StreamPETR counts them), and the learning rate follows
# the total batch through `auto_scale_lr`.
recipe = dict(epochs=60, samples_per_epoch=28130)
max_iters = 60 * (28130 // 16)  # 105480 at 8 x 2

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'img_backbone': dict(lr_mult=0.1)}),
    clip_grad=dict(max_norm=35, norm_type=2))

param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=max_iters, T_max=max_iters,
         eta_min_ratio=1e-3),
]

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=True, base_batch_size=16)
