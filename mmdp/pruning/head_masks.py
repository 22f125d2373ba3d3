"""Masks of the head's pruned units and removed decoder layers (the head half of PruningMasks).

A pruned MLP unit is zero in its input Linear's row and bias and its output Linear's column, so
it adds nothing; a pruned head is zero in its q, k and v rows and out_proj columns (its
attention output is then exactly 0, whatever its softmax). A removed decoder layer keeps its
dense parameters (its FFN and attentions zeroed, its norms unused) and is bypassed by a forward hook that returns its query input, as
`PassQuery` does in the exported model.
"""
import torch
from torch import nn

from mmdp.structure import Structure, StructureChoice
from mmdp.structure.apply import part_features
from mmdp.structure.head import ATTENTION, DECODER_LAYER, MLP


def _features(part, kept: list, removed: bool) -> torch.Tensor:
    keep = torch.zeros(part.units * part.unit, dtype=torch.bool)
    if not removed:
        keep[part_features(part, kept)] = True
    return keep


def head_masks(structure: Structure, choice: StructureChoice) -> dict:
    """{parameter name: bool mask (True = kept)} of the head parts and removed decoder layers."""
    masks = {}
    for part in structure.valued_parts:
        keep = _features(part, choice.kept(structure, part.group),
                         part.block in choice.removed_blocks)
        if part.kind == MLP:
            producers, consumer = part.modules[:1], part.modules[1]
        elif part.kind == ATTENTION:
            producers, consumer = part.modules[:3], part.modules[3]
        else:
            continue
        for path in producers:
            masks[f'{path}.weight'] = keep[:, None]
            if part.bias:
                masks[f'{path}.bias'] = keep
        masks[f'{consumer}.weight'] = keep[None, :]
    return masks


def _pass_query(module, args, kwargs, output):
    return args[0] if args else kwargs['query']


def bypass_removed_layers(model: nn.Module, structure: Structure,
                          choice: StructureChoice) -> list:
    """Make every removed decoder layer return its query input; returns the hook handles."""
    return [model.get_submodule(block.name).register_forward_hook(_pass_query, with_kwargs=True)
            for block in structure.blocks
            if block.kind == DECODER_LAYER and block.name in choice.removed_blocks]
