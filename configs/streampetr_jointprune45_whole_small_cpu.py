# Whole-detector JointPruning-45% at CPU-test scale: as configs/streampetr_jointprune45_small_cpu.py
# (saliency over iteration 0, search steps before iterations 1-9, fine-tuning to iteration 20),
# with the head's dimensions in the pruning vector (position encoder and FFN hidden widths,
# attention heads, decoder depth, token setting) and the whole detector's latency at every
# ladder size, one whole-detector table per size (the head's cost follows the image tokens):
#   for s in '6 3 96 256' '6 3 80 224' '6 3 64 192'; do set -- $s
#     python tools/profile_latency.py configs/streampetr_jointprune45_whole_small_cpu.py \
#         --input-shape $s --step 128 --out work_dirs/latency/jointprune_whole_small_cpu_$3x$4.json
#   done
_base_ = ['./streampetr_jointprune45_small_cpu.py']

prunable_head = 'pts_bbox_head'
ladder = [(96, 256), (80, 224), (64, 192)]
# Token counts: the allowed (num_query, num_propagated, memory_len), the dense (60, 16, 64) added.
model = dict(pts_bbox_head=dict(token_settings=[(30, 8, 32), (45, 16, 48)]))
latency_tables = {f'{h}x{w}': f'work_dirs/latency/jointprune_whole_small_cpu_{h}x{w}.json'
                  for h, w in ladder}

# Channels in steps of the tables' 128 (head_chunk=None: hidden units too); fitted=False: the
# plain sum of the timings, as the whole-detector MDP config.
custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=1),
    dict(type='JointPruningHook', prune_ratio=0.45,
         latency=dict(type='lut_bilinear', fitted=False, tables=latency_tables), ladder=ladder,
         chunk=128, prune_residual=True, search_begin=1, search_end=10, interval=1, pairs=1),
]
