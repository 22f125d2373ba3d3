"""Masks that make a dense model compute exactly what its pruned copy computes.

A pruned channel is zero in its conv's filter and bias and in its BN's gamma and beta, so the BN
emits exactly 0 whatever its running statistics; the convs reading it (and the neck's lateral
convs) have zero weights on it too. A removed block is masked whole: every channel of its
residual branch is zero, so it returns relu(shortcut(x)) as `IdentityResidual` does, while the
model keeps its dense parameters. Keeping the dense modules (rather than swapping in
`IdentityResidual`) keeps DistributedDataParallel's parameter list, the optimizer's parameter
groups and every checkpoint's keys and shapes those of the dense model, so dense and pruned
checkpoints load into the same model. Gradients are masked by tensor hooks, before DDP reduces
them and before the optimizer reads them, and the optimizer state of pruned entries is zeroed
once at the pruning event: AdamW then leaves a zero entry zero (zero moments give a zero update,
and decoupled weight decay scales zero to zero).
"""
import torch
from torch import nn

from mmdp.structure import Structure, StructureChoice

from .head_masks import bypass_removed_layers, head_masks


def _keep(size: int, kept) -> torch.Tensor:
    keep = torch.zeros(size, dtype=torch.bool)
    keep[list(kept)] = True
    return keep


class PruningMasks:
    """{parameter name: bool mask (True = kept)} of `choice` on the model `structure` was derived
    from; only parameters with a pruned entry get a mask."""

    def __init__(self, structure: Structure, choice: StructureChoice):
        choice.check(structure)
        self.structure, self.choice = structure, choice
        kept = {g: _keep(full, choice.kept(structure, g)) for g, full in structure.groups.items()}
        masks = {}
        for layer in structure.layers:
            out = kept[layer.group]
            if layer.block in choice.removed_blocks:
                out = torch.zeros_like(out)
            inp = kept[layer.input_group] if layer.input_group else torch.ones(
                layer.in_channels, dtype=torch.bool)
            masks[f'{layer.name}.weight'] = out[:, None, None, None] & inp[None, :, None, None]
            if layer.bias:
                masks[f'{layer.name}.bias'] = out
            masks[f'{layer.bn}.weight'] = out
            masks[f'{layer.bn}.bias'] = out
        for consumer in structure.consumers:
            masks[f'{consumer.name}.weight'] = kept[consumer.group][None, :, None, None]
        if structure.parts:
            masks.update(head_masks(structure, choice))
        self.masks = {name: m for name, m in masks.items() if not bool(m.all())}

    def _params(self, model: nn.Module):
        for name, mask in self.masks.items():
            param = model.get_parameter(name)
            yield param, mask.to(param.device).expand_as(param)

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Zero every pruned entry of the model's parameters."""
        for param, mask in self._params(model):
            param.masked_fill_(~mask, 0)

    @torch.no_grad()
    def apply_to_optimizer_(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Zero the per-entry optimizer state (Adam moments, momentum) of pruned entries."""
        for param, mask in self._params(model):
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.shape == param.shape:
                    value.masked_fill_(~mask, 0)

    def enforce_(self, model: nn.Module, optimizers: list) -> list:
        """Everything training needs: mask the model and the optimizers' state, and hook the
        gradients of the parameters the optimizers update; returns the hook handles."""
        self.apply_(model)
        for optimizer in optimizers:
            self.apply_to_optimizer_(model, optimizer)
        trained = {id(p) for opt in optimizers for group in opt.param_groups
                   for p in group['params'] if p.requires_grad}
        return self.hook_gradients(model, trained) + self.bypass(model)

    def bypass(self, model: nn.Module) -> list:
        """Hooks that make removed decoder layers pass their query on (none for a backbone
        structure); returns the handles."""
        return bypass_removed_layers(model, self.structure, self.choice)

    def hook_gradients(self, model: nn.Module, trained: set) -> list:
        """Zero the gradients of pruned entries as they are computed, for the parameters whose
        id is in `trained` (those an optimizer updates); returns the hook handles."""
        handles = []
        for param, mask in self._params(model):
            if id(param) in trained:
                handles.append(param.register_hook(
                    lambda grad, keep=mask: grad.masked_fill(~keep, 0)))
        return handles
