# MDP-50%: as configs/streampetr_mdp45.py, pruned to 50% of the modelled latency.
_base_ = ['./streampetr_mdp45.py']

custom_hooks = [
    dict(type='SaliencyHook', begin=0, end=1758),
    dict(type='PruningHook', latency_table='work_dirs/latency/streampetr_r50_704.json',
         latency_model='lut_bilinear', solver=dict(type='mdp', time_limit=60),
         prune_ratio=0.50, chunk=32, at_iter=1758),
]
