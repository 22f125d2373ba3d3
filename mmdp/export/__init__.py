"""Export of a pruning run's checkpoint to a physically smaller model (config + weights)."""
from .export import export_pruned
from .pruned_head import PrunedStreamPETRHead
from .pruned_resnet import PROBE_SHAPE, PrunedResNet, StructureMismatchError

__all__ = ['PROBE_SHAPE', 'PrunedResNet', 'PrunedStreamPETRHead', 'StructureMismatchError', 'export_pruned']
