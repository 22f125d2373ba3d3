# JointPruning-45% at CPU-test scale (the small config's model and data): Taylor saliency over
# iteration 0, search steps before iterations 1-9 with MACs of the derived backbone as the
# latency model (no table to profile), then fine-tuning to iteration 20.
_base_ = ['./streampetr_r50_small_cpu.py']

custom_imports = dict(
    imports=['mmdp.checkpoint_compat', 'mmdp.hooks', 'mmdp.jointprune', 'projects.streampetr'],
    allow_failed_imports=False)

# Full size first; multiples of 16 (see configs/streampetr_jointprune45.py).
ladder = [(96, 256), (80, 224), (64, 192)]
# BN frozen (norm_eval) as in the full config: sub-network losses of the search are compared
# with each other and with the dense one, which batch statistics would make differ.
model = dict(data_preprocessor=dict(pad_size_divisor=16),
             img_backbone=dict(norm_cfg=dict(type='BN2d', requires_grad=False), norm_eval=True))

# Only what differs from JointPruningHook's defaults (Taylor importance, 32-channel chunks,
# widths >= 1/4, one block per stage kept, step 0.1, sigma 0.15).
custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=1),
    dict(type='JointPruningHook', prune_ratio=0.45, latency=dict(type='flops'), ladder=ladder,
         prune_residual=True, search_begin=1, search_end=10, interval=1, pairs=1),
]
