# StreamPETR R50 as published (stream_petr_r50_flash_704_bs2_seq_428q_nui_60e.py): the dense
# config plus what needs a GPU: fp16 mixed precision with a dynamic loss scale (mmcv's
# Fp16OptimizerHook(loss_scale='dynamic') = torch's GradScaler defaults, as AmpOptimWrapper's)
# and activation checkpointing in the backbone. 8 GPUs x 2 samples, 60 epochs.
_base_ = ['./streampetr_r50_704_dense.py']

model = dict(img_backbone=dict(with_cp=True))
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
