"""Masks of the head's pruned units and removed decoder layers (the head half of PruningMasks).

A pruned MLP unit is zero in its input Linear's row and bias and its output Linear's column, so
it adds nothing; a pruned head is zero in its q, k and v rows and out_proj columns (its
attention output is then exactly 0, whatever its softmax). A removed decoder layer keeps its
dense parameters (its FFN and attentions zeroed, its norms unused) and is bypassed by a forward
hook that returns its query input, as `PassQuery` does in the exported model. A token setting
keeps the dense parameters too: the pruned learnable queries are zero rows of
`reference_points`, and the head runs with only the kept ones and the setting's propagated
count and memory length (`StreamPETRHead.use_tokens`), as the exported head does with its
sliced ones.
"""
import torch
from torch import nn

from mmdp.structure import Structure, StructureChoice
from mmdp.structure.apply import part_features
from mmdp.structure.head import ATTENTION, DECODER_LAYER, MLP, TOKENS, token_setting


def _features(part, kept: list, removed: bool) -> torch.Tensor:
    size = part.settings[-1][0] if part.kind == TOKENS else part.units * part.unit
    keep = torch.zeros(size, dtype=torch.bool)
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
        elif part.kind == TOKENS:
            masks[f'{part.modules[1]}.weight'] = keep[:, None]
            continue
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


class TokenSetting:
    """Runs a head at a token setting until `remove()` (a handle, as the hooks' are)."""

    def __init__(self, head: nn.Module, queries: list, setting: tuple):
        self.head = head
        self.previous = head.use_tokens(queries, *setting[1:])

    def remove(self) -> None:
        self.head.restore_tokens(self.previous)


def bypass_removed_layers(model: nn.Module, structure: Structure,
                          choice: StructureChoice) -> list:
    """Make every removed decoder layer return its query input and the head run at the chosen
    token setting; returns the handles."""
    handles = [model.get_submodule(block.name).register_forward_hook(_pass_query,
                                                                     with_kwargs=True)
               for block in structure.blocks
               if block.kind == DECODER_LAYER and block.name in choice.removed_blocks]
    for part in structure.parts:
        if part.kind == TOKENS:
            kept = choice.kept(structure, part.group)
            handles.append(TokenSetting(model.get_submodule(part.modules[0]), kept,
                                        token_setting(part, len(kept))))
    return handles
