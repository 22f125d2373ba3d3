# Whole-detector MDP-45%: as configs/streampetr_mdp45.py (dense checkpoint, one epoch of
# saliency, one-shot MDP event, fine-tuning), with the head's dimensions in the same program:
# the position encoder's hidden width, each decoder layer's FFN width and attention heads (self
# and cross), removal of whole decoder layers, and the neck's lateral convs in the latency model.
# Its latency table, on the device this run trains on:
#   python tools/profile_latency.py configs/streampetr_mdp45_whole.py \
#       --out work_dirs/latency/streampetr_whole_704.json
_base_ = ['./streampetr_mdp45.py']

prunable_head = 'pts_bbox_head'
custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=1758),
    dict(type='PruningHook', latency_table='work_dirs/latency/streampetr_whole_704.json',
         latency_model='lut_bilinear', solver=dict(type='mdp', time_limit=60),
         prune_ratio=0.45, chunk=32, at_iter=1758),
]
# Token counts in the same program: the allowed (num_query, num_propagated, memory_len), the
# dense (300, 128, 512) added; every decoder part's latency is a table over (width, setting).
model = dict(pts_bbox_head=dict(token_settings=[
    (100, 32, 128), (150, 64, 256), (200, 64, 384), (250, 128, 512)]))
