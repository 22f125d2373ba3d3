# MDP-45%: start from the dense StreamPETR checkpoint, collect Taylor saliency for one epoch,
# prune channels and whole residual blocks of the backbone to 55% of its modelled latency in
# one shot (one mixed-integer program over the bilinear latency LUT), then fine-tune with the
# pruned channels masked. Afterwards:
#   python tools/export_pruned.py configs/streampetr_mdp45.py WORK_DIR/iter_N.pth --out DIR
#
# The latency table must be profiled on the device this run trains on (or name the device it
# was profiled on with `latency_device`), at `latency_input_shape`:
#   python tools/profile_latency.py configs/streampetr_r50_704_dense.py \
#       --out work_dirs/latency/streampetr_r50_704.json
# Hook settings are overridden by list index, e.g.
#   --cfg-options load_from=DENSE.pth custom_hooks.1.latency_table=TABLE.json
_base_ = ['./streampetr_r50_704_dense.py']

custom_imports = dict(imports=['mmdp.checkpoint_compat', 'mmdp.hooks', 'projects.streampetr'],
                      allow_failed_imports=False)
load_from = 'work_dirs/streampetr_r50_704_dense/dense.pth'  # the dense model to prune

# One epoch of the recipe (28130 samples at 8 GPUs x 2) of saliency, then the one-shot event;
# with another GPU count the window keeps its length in iterations.
custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=1758),
    dict(type='PruningHook', latency_table='work_dirs/latency/streampetr_r50_704.json',
         latency_model='lut_bilinear', solver=dict(type='mdp', time_limit=60),
         prune_ratio=0.45, chunk=32, at_iter=1758),
]
