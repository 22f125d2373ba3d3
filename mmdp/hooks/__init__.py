"""MMEngine hooks that prune inside training: saliency collection and the pruning events."""
from .pruning_hook import PruningHook
from .saliency_hook import SaliencyHook

__all__ = ['PruningHook', 'SaliencyHook']
