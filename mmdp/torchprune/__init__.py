"""The Torch-Pruning baseline: Torch-Pruning's global Taylor pruning decides, mmdp's pipeline
masks, fine-tunes and exports (the optional extra `torch-pruning`, imported when used)."""
from .decision import (PruningView, choice_from_pruned, find_ratio, torch_pruning,
                       tp_choice)
from .gradients import WeightGradients
from .hook import TorchPruningHook, kept_importance

__all__ = ['PruningView', 'TorchPruningHook', 'WeightGradients', 'choice_from_pruned',
           'find_ratio', 'kept_importance', 'torch_pruning', 'tp_choice']
