# HALP-45% at CPU-test scale: as configs/streampetr_halp45.py (the same saliency, the linear
# LUT with input widths frozen, the exact knapsack) on the small config's model and data, in
# 3 steps one iteration apart after a 3-iteration window. Its latency table is that of
# configs/streampetr_mdp45_small_cpu.py.
_base_ = ['./streampetr_mdp45_small_cpu.py']

custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=5),
    dict(type='PruningHook', latency_table='work_dirs/latency/streampetr_small_cpu.json',
         latency_model=dict(type='lut_linear', fitted=False),
         solver=dict(type='halp', method='exact'),
         prune_ratio=0.45, chunk=None, at_iter=3, steps=3, interval=1),
]
