"""Evaluate a sub-network with the dense weights, copying none of them.

Inside `subnetwork(model, structure, choice)` the model computes the pruned network of `choice`:
a forward hook multiplies the output of every BN of a pruned group by its 0/1 channel mask
(a masked channel is then exactly zero downstream, as in `mask_pruned_`, whose conv filter, gamma
and beta are zero), and every removed block is swapped for `IdentityResidual` around the same
projection modules. On exit the hooks are removed and the blocks put back.
"""
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdp.structure import IdentityResidual, Structure, StructureChoice


def _mask_hook(mask: torch.Tensor):
    def hook(module, inputs, output):
        return output * mask.to(output.device, output.dtype).view(1, -1, 1, 1)
    return hook


def _swap(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put `module` at `path`; returns the module that was there."""
    parent_path, _, child = path.rpartition('.')
    parent = model.get_submodule(parent_path) if parent_path else model
    old = parent._modules[child]
    parent._modules[child] = module
    return old


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
            if block.name in choice.removed_blocks:
                shortcut = (nn.Sequential(*[model.get_submodule(p) for p in block.shortcut])
                            if block.shortcut else None)
                swapped.append((block.name, _swap(model, block.name, IdentityResidual(shortcut))))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for path, original in reversed(swapped):
            _swap(model, path, original)
