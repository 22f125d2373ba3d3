# Whole-detector JointPruning-45%: as configs/streampetr_jointprune45.py (dense checkpoint, one
# epoch of saliency, about 300 search steps, fine-tuning), with the head's dimensions in the
# pruning vector: the position encoder's and every decoder layer's FFN hidden width, every
# attention's heads (self and cross), the decoder's depth (layers kept, the least salient removed
# first) and the token setting (num_query, num_propagated, memory_len). The budget is 55% of the
# whole detector's predicted latency (backbone, neck convs, head parts) at full size, and every
# image size of the ladder is priced by its own whole-detector table (the head's cost follows
# the image tokens), profiled once per size on the target GPU:
#   python tools/profile_latency.py configs/streampetr_jointprune45_whole.py \
#       --input-shape 6 3 240 656 --out work_dirs/latency/streampetr_whole_240x656_fp32.json
_base_ = ['./streampetr_jointprune45.py']

prunable_head = 'pts_bbox_head'
ladder = [(256, 704), (240, 656), (224, 608), (208, 576), (192, 528), (176, 480)]
# As configs/streampetr_mdp45_whole.py: the allowed settings, the dense (300, 128, 512) added.
model = dict(data_preprocessor=dict(pad_size_divisor=16), pts_bbox_head=dict(token_settings=[
    (100, 32, 128), (150, 64, 256), (200, 64, 384), (250, 128, 512)]))
latency_tables = {f'{h}x{w}': f'work_dirs/latency/streampetr_whole_{h}x{w}_fp32.json'
                  for h, w in ladder}

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
