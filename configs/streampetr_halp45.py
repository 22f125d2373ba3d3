# HALP-45%: the baseline of configs/streampetr_mdp45.py with the same Taylor saliency: channels
# only (no block removal), 30 knapsack steps, one every 40 iterations, on the latency schedule
# L0 * (1 - 0.45) ** (s / 30), each with the linear LUT whose input widths are frozen at their
# current values; saliency is collected over the 40 iterations before each step. Then fine-tune.
_base_ = ['./streampetr_mdp45.py']

custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=40 + 29 * 40),
    dict(type='PruningHook', latency_table='work_dirs/latency/streampetr_r50_704.json',
         latency_model='lut_linear', solver=dict(type='halp', method='exact'),
         prune_ratio=0.45, chunk=32, at_iter=40, steps=30, interval=40),
]
