"""Local checkpoints load on torch >= 2.6.

torch 2.6 made `torch.load(weights_only=True)` the default; mmengine 0.10.7 calls `torch.load`
without the argument, and its own checkpoints hold numpy scalars and mmengine objects (the message
hub's history buffers), so every resume fails. The local-file scheme is re-registered to load a
file the user named as mmengine always did.
"""
import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} can not be found')
    return torch.load(filename, map_location=map_location, weights_only=False)
