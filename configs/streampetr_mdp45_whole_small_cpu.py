# Whole-detector MDP-45% at CPU-test scale: as configs/streampetr_mdp45_small_cpu.py, with the
# head's dimensions (position encoder width, FFN widths, attention heads, decoder layers) and the
# neck's lateral convs in the same program. Its latency table:
#   python tools/profile_latency.py configs/streampetr_mdp45_whole_small_cpu.py \
#       --out work_dirs/latency/streampetr_whole_small_cpu.json --step 128
_base_ = ['./streampetr_mdp45_small_cpu.py']

prunable_head = 'pts_bbox_head'
custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=3),
    dict(type='PruningHook', latency_table='work_dirs/latency/streampetr_whole_small_cpu.json',
         latency_model=dict(type='lut_bilinear', fitted=False),
         solver=dict(type='mdp', time_limit=30),
         prune_ratio=0.45, chunk=None, at_iter=3, steps=1, interval=0),
]
# Token counts: the allowed (num_query, num_propagated, memory_len), the dense (60, 16, 64) added.
model = dict(pts_bbox_head=dict(token_settings=[(30, 8, 32), (45, 16, 48)]))
