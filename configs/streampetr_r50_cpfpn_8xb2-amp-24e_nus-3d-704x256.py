# The published StreamPETR R50 recipe (fp16, 8 GPUs x 2 samples) over 24 epochs.
_base_ = ['./streampetr_r50_cpfpn_8xb2-amp-60e_nus-3d-704x256.py']

recipe = dict(epochs=24, samples_per_epoch=28130)
max_iters = 24 * (28130 // 16)  # 42192 at 8 x 2; tools/train.py recomputes it from `recipe`
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=500),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=max_iters, T_max=max_iters,
         eta_min_ratio=1e-3),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
