"""Evaluate a sub-network with the dense weights, copying none of them.

Inside `subnetwork(model, structure, choice)` the model computes the pruned network of `choice`:
a forward hook multiplies the output of every BN of a pruned group by its 0/1 channel mask
(a masked channel is then exactly zero downstream, as in `mask_pruned_`, whose conv filter, gamma
and beta are zero), and every removed block is swapped for `IdentityResidual` around the same
projection modules. Head parts of a whole-detector structure: a forward pre-hook multiplies the
input of a part's gate Linear (an FFN's or the position encoder's output Linear, an attention's
out_proj) by the 0/1 mask of its kept units, which is what the pruning masks' zero rows, biases
and columns compute; removed decoder layers and the token setting go through the pruning masks'
own hooks (`bypass_removed_layers`). A token setting restarts the head's memory
(`use_tokens`); the memory is put back, cut to the setting's `memory_len` (newest slots first:
what a shorter queue would hold of the same frames), so that every sub-network of a step is
evaluated with the memory of the training run. On exit the hooks are removed, the blocks put
back, the head at its dense token counts with its memory as it was.
"""
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdp.pruning.head_masks import bypass_removed_layers
from mmdp.structure import IdentityResidual, Structure, StructureChoice
from mmdp.structure.apply import part_features
from mmdp.structure.head import ATTENTION, DECODER_LAYER, MLP, TOKENS


def _mask_hook(mask: torch.Tensor):
    def hook(module, inputs, output):
        return output * mask.to(output.device, output.dtype).view(1, -1, 1, 1)
    return hook


def _gate_hook(mask: torch.Tensor):
    def hook(module, args):
        x = args[0]
        return (x * mask.to(x.device, x.dtype), *args[1:])
    return hook


def _swap(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put `module` at `path`; returns the module that was there."""
    parent_path, _, child = path.rpartition('.')
    parent = model.get_submodule(parent_path) if parent_path else model
    old = parent._modules[child]
    parent._modules[child] = module
    return old


def _head_handles(model: nn.Module, structure: Structure, choice: StructureChoice) -> list:
    """Unit masks of the head parts, bypassed decoder layers, the token setting."""
    handles = []
    for part in structure.valued_parts:
        width = choice.width(structure, part.group)
        if (part.kind not in (MLP, ATTENTION) or width == structure.groups[part.group]
                or part.block in choice.removed_blocks):
            continue
        mask = torch.zeros(part.units * part.unit)
        mask[part_features(part, choice.kept(structure, part.group))] = 1
        handles.append(model.get_submodule(part.gate).register_forward_pre_hook(
            _gate_hook(mask)))
    memories = [_Memory(model.get_submodule(p.modules[0]))
                for p in structure.parts if p.kind == TOKENS]
    handles += memories  # removed after the token setting, which restarts the memory
    handles += bypass_removed_layers(model, structure, choice)
    for memory in memories:
        memory.cut()
    return handles


class _Memory:
    """The memory queue of a head, kept across a token setting: `cut()` puts it back cut to
    the head's current `memory_len`, `remove()` puts it back whole."""

    def __init__(self, head: nn.Module):
        self.head = head
        self.saved = (None if head.memory_embedding is None
                      else {name: getattr(head, name) for name in head.MEMORY})

    def _put(self, length=None) -> None:
        if self.saved is not None:
            for name, value in self.saved.items():
                setattr(self.head, name, value if length is None else value[:, :length])

    def cut(self) -> None:
        self._put(self.head.memory_len)

    def remove(self) -> None:
        self._put()


@contextmanager
def subnetwork(model: nn.Module, structure: Structure, choice: StructureChoice):
    """`model` behaves as the sub-network of `choice` inside the block (see the module doc)."""
    choice.check(structure)
    handles, swapped = [], []
    try:
        for layer in structure.layers:
            width = choice.width(structure, layer.group)
            if width == structure.groups[layer.group] or layer.block in choice.removed_blocks:
                continue
            bn = model.get_submodule(layer.bn)
            if not isinstance(bn, _BatchNorm):
                raise ValueError(f'{layer.bn} is a {type(bn).__name__}, expected a BatchNorm')
            mask = torch.zeros(structure.groups[layer.group])
            mask[choice.kept(structure, layer.group)] = 1
            handles.append(bn.register_forward_hook(_mask_hook(mask)))
        for block in structure.blocks:
            if block.name in choice.removed_blocks and block.kind != DECODER_LAYER:
                shortcut = (nn.Sequential(*[model.get_submodule(p) for p in block.shortcut])
                            if block.shortcut else None)
                swapped.append((block.name, _swap(model, block.name, IdentityResidual(shortcut))))
        if structure.parts:
            handles += _head_handles(model, structure, choice)
        yield model
    finally:
        for handle in reversed(handles):
            handle.remove()
        for path, original in reversed(swapped):
            _swap(model, path, original)
