"""Fix a chosen sub-network in a model for fine-tuning, so that it stays the pruned network.

`mask_pruned_` (mmdp.structure) zeroes the pruned output channels of every conv and its BN and
swaps removed blocks for `IdentityResidual`. Training would revive them: a zeroed BN gamma still
gets a gradient (the normalised input), and Adam's moments from before the pruning keep moving a
weight whose gradient is zero. So the gradients of the pruned entries are masked to zero by
tensor hooks, and their optimizer state (e.g. Adam's moments) is zeroed once, at the fix:
with zero gradient and zero moments Adam(W) leaves a zero weight at zero.

Stand-in for the masks of the MDP/HALP pruning hooks (mmdp/hooks), to be unified with them.
"""
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdp.structure import Structure, StructureChoice, mask_pruned_


def pruned_entries(model: nn.Module, structure: Structure, choice: StructureChoice) -> list:
    """(parameter, 0/1 keep mask of its shape) for every kept conv / BN with pruned output
    channels (the parameters of removed blocks leave the model with them)."""
    entries = []
    for layer in structure.layers:
        width = choice.width(structure, layer.group)
        if width == structure.groups[layer.group] or layer.block in choice.removed_blocks:
            continue
        keep = torch.zeros(structure.groups[layer.group], dtype=torch.bool)
        keep[choice.kept(structure, layer.group)] = True
        for module in (model.get_submodule(layer.name), model.get_submodule(layer.bn)):
            if not isinstance(module, (nn.Conv2d, _BatchNorm)):
                raise ValueError(f'{layer.name}: expected a Conv2d and a BatchNorm, found '
                                 f'{type(module).__name__}')
            for param in (module.weight, module.bias):
                if param is not None:
                    shape = (-1, ) + (1, ) * (param.dim() - 1)
                    mask = keep.view(shape).expand_as(param).to(param.device, param.dtype)
                    entries.append((param, mask))
    return entries


def apply_fixed_choice(model: nn.Module, structure: Structure, choice: StructureChoice) -> list:
    """Mask `model` in place to `choice` and hook the gradients of its pruned entries; returns
    the hook handles (remove them to undo the gradient masking)."""
    mask_pruned_(model, structure, choice)
    handles = []
    for param, mask in pruned_entries(model, structure, choice):
        if param.requires_grad:
            handles.append(param.register_hook(lambda grad, mask=mask: grad * mask))
    return handles


def zero_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module,
                         structure: Structure, choice: StructureChoice) -> None:
    """Zero every per-parameter tensor of the optimizer state at the pruned entries."""
    for param, mask in pruned_entries(model, structure, choice):
        for value in optimizer.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.mul_(mask)
