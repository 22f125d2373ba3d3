# JointPruning-45%: StreamPETR R50 704x256 with backbone width, depth and camera image size
# searched by numerical gradients under 55% of the dense backbone's predicted latency, then
# fine-tuned, in one run that starts from the trained dense model:
#   python tools/train.py configs/streampetr_jointprune45.py --work-dir work_dirs/jointprune45 \
#       --cfg-options load_from=work_dirs/dense/iter_42195.pth
# The latency tables are profiled once per ladder size on the target GPU, e.g.
#   python tools/profile_latency.py configs/streampetr_r50_704_dense.py \
#       --input-shape 6 3 240 656 --out work_dirs/latency/r50_240x656_fp32.json
# The run writes jointprune_trajectory.{jsonl,png}, jointprune_solution.json and
# jointprune_final_config.py (the config at the chosen image size, for tools/test.py) to the
# work directory.
_base_ = ['./streampetr_r50_704_dense.py']

custom_imports = dict(imports=['mmdp', 'projects.streampetr', 'mmdp.jointprune'],
                      allow_failed_imports=False)

# Image sizes the search may choose, (H, W), full size first. Multiples of 16: the neck
# interpolates the stride-32 level to the stride-16 one, so 16 is all the model needs, and the
# preprocessor pads to it (the full size 256x704 needs no padding either way).
ladder = [(256, 704), (240, 656), (224, 608), (208, 576), (192, 528), (176, 480)]
model = dict(data_preprocessor=dict(pad_size_divisor=16))

latency_tables = {f'{h}x{w}': f'work_dirs/latency/r50_{h}x{w}_fp32.json' for h, w in ladder}

# About 300 search steps (6 sub-network losses each) in the first 3000 iterations, then
# fine-tuning of the fixed sub-network for the rest of the dense schedule.
custom_hooks = [
    dict(type='JointPruningHook',
         prune_ratio=0.45,
         latency=dict(type='lut_bilinear', tables=latency_tables),
         ladder=ladder,
         chunk=32,
         min_width=0.25,
         min_depth=1,
         prune_residual=True,
         search_begin=0,
         search_end=3000,
         interval=10,
         pairs=2,
         step=0.1,
         sigma=0.15,
         seed=0),
]
