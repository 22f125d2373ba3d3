# Torch-Pruning baseline at MDP-45%'s budget: the same dense checkpoint, saliency window, latency
# table and model, event iteration and fine-tuning as streampetr_mdp45.py; at the event
# Torch-Pruning's MetaPruner (global pruning, GroupTaylorImportance on the window's mean conv
# weight gradients, round_to=chunk) decides, at the smallest ratio whose latency under the
# bilinear LUT is at most 55% of the dense backbone's (docs/torch-pruning.md). Needs the extra:
#   pip install -c constraints.txt -e '.[torch-pruning]'
# Afterwards:
#   python tools/export_pruned.py configs/streampetr_torchprune45.py WORK_DIR/iter_N.pth --out DIR
_base_ = ['./streampetr_mdp45.py']

custom_imports = dict(
    imports=['mmdp.checkpoint_compat', 'mmdp.hooks', 'mmdp.torchprune', 'projects.streampetr'],
    allow_failed_imports=False)

custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=1758),
    dict(type='TorchPruningHook', latency_table='work_dirs/latency/streampetr_r50_704.json',
         latency_model='lut_bilinear', prune_ratio=0.45, chunk=32, at_iter=1758),
]
