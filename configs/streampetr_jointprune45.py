# JointPruning-45%: StreamPETR R50 704x256 with backbone width, depth and camera image size
# searched by numerical gradients under 55% of the dense backbone's predicted latency, then
# fine-tuned, in one run that starts from the trained dense model:
#   python tools/train.py configs/streampetr_jointprune45.py --work-dir work_dirs/jointprune45 \
#       --cfg-options load_from=DENSE.pth
# Channels and blocks are taken in the order of the Taylor saliency the MDP and HALP runs use
# (one epoch, then the search). The latency tables are profiled once per ladder size on the
# target GPU, e.g.
#   python tools/profile_latency.py configs/streampetr_r50_704_dense.py \
#       --input-shape 6 3 240 656 --out work_dirs/latency/r50_240x656_fp32.json
# The run writes jointprune_trajectory.{jsonl,png}, jointprune_solution.json and
# jointprune_final_config.py (the config at the chosen image size) to the work directory;
# afterwards, for a physically smaller model:
#   python tools/export_pruned.py WORK_DIR/jointprune_final_config.py WORK_DIR/iter_N.pth --out DIR
_base_ = ['./streampetr_r50_704_dense.py']

custom_imports = dict(
    imports=['mmdp.checkpoint_compat', 'mmdp.hooks', 'mmdp.jointprune', 'projects.streampetr'],
    allow_failed_imports=False)
load_from = 'work_dirs/streampetr_r50_704_dense/dense.pth'  # the dense model to prune

# Image sizes the search may choose, (H, W), full size first. Multiples of 16: the neck
# interpolates the stride-32 level to the stride-16 one, so 16 is all the model needs, and the
# preprocessor pads to it (the full size 256x704 needs no padding either way).
ladder = [(256, 704), (240, 656), (224, 608), (208, 576), (192, 528), (176, 480)]
model = dict(data_preprocessor=dict(pad_size_divisor=16))

latency_tables = {f'{h}x{w}': f'work_dirs/latency/r50_{h}x{w}_fp32.json' for h, w in ladder}

# One epoch of the recipe (28130 samples at 8 GPUs x 2) of saliency, then about 300 search
# steps (6 sub-network losses each, 2 antithetic pairs), then fine-tuning of the fixed
# sub-network for the rest of the schedule.
custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=1758),
    dict(type='JointPruningHook',
         prune_ratio=0.45,
         latency=dict(type='lut_bilinear', tables=latency_tables),
         importance='taylor',
         ladder=ladder,
         chunk=32,
         min_width=0.25,
         min_depth=1,
         prune_residual=True,
         search_begin=1758,
         search_end=4758,
         interval=10,
         pairs=2,
         step=0.1,
         sigma=0.15,
         seed=0),
]
