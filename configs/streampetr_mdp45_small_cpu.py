# MDP-45% at CPU-test scale (configs/streampetr_r50_small_cpu.py): saliency over iterations 0-2,
# the one-shot pruning event before iteration 3, fine-tuning to iteration 8. Its latency table:
#   python tools/profile_latency.py configs/streampetr_r50_small_cpu.py \
#       --out work_dirs/latency/streampetr_small_cpu.json --step 128
# The demo (tools/demo.py) sets a longer window and fine-tuning on the command line:
#   --cfg-options custom_hooks.0.end=W custom_hooks.1.at_iter=W train_cfg.max_iters=N
_base_ = ['./streampetr_r50_small_cpu.py']

custom_imports = dict(imports=['mmdp.checkpoint_compat', 'mmdp.hooks', 'projects.streampetr'],
                      allow_failed_imports=False)
train_cfg = dict(max_iters=8, val_interval=8)
default_hooks = dict(checkpoint=dict(interval=4))
# Fine-tuning a trained model: a short warm-up, then half the dense rate, constant (so that
# the iteration count alone can be changed from the command line).
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=5)]

# chunk=None: channels in steps of the table's profiled step. fitted=False: the plain sum of the
# table's conv timings, since overheads fitted to a few noisy CPU timings can be degenerate.
custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=3),
    dict(type='PruningHook', latency_table='work_dirs/latency/streampetr_small_cpu.json',
         latency_model=dict(type='lut_bilinear', fitted=False),
         solver=dict(type='mdp', time_limit=30),
         prune_ratio=0.45, chunk=None, at_iter=3, steps=1, interval=0),
]
