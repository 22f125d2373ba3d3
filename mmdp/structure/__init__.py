"""Prunable structure of a built backbone, structure choices, and applying them to a model."""
from .apply import IdentityResidual, mask_pruned_, prune_copy
from .choice import StructureChoice
from .derive import (Block, ConvLayer, Consumer, Structure, UnsupportedStructureError,
                     derive_structure)

__all__ = [
    'Block', 'ConvLayer', 'Consumer', 'IdentityResidual', 'Structure', 'StructureChoice',
    'UnsupportedStructureError', 'derive_structure', 'mask_pruned_', 'prune_copy'
]
