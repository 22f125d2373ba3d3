# The Torch-Pruning baseline at CPU-test scale, as streampetr_mdp45_small_cpu.py: saliency and
# conv gradients over iterations 0-2, the event before iteration 3, fine-tuning to iteration 8.
# Its latency table:
#   python tools/profile_latency.py configs/streampetr_r50_small_cpu.py \
#       --out work_dirs/latency/streampetr_small_cpu.json --step 128
_base_ = ['./streampetr_mdp45_small_cpu.py']

custom_imports = dict(
    imports=['mmdp.checkpoint_compat', 'mmdp.hooks', 'mmdp.torchprune', 'projects.streampetr'],
    allow_failed_imports=False)

# chunk=None: round_to the table's profiled step.
custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=3),
    dict(type='TorchPruningHook', latency_table='work_dirs/latency/streampetr_small_cpu.json',
         latency_model=dict(type='lut_bilinear', fitted=False),
         prune_ratio=0.45, chunk=None, at_iter=3),
]
