"""Apply a structure choice to a model: physically (a smaller copy) or by masking in place.

Both give the same function: a pruned channel is exactly zero in the masked model (its conv
filter, BN gamma and BN beta are zero, so BN outputs 0 and ReLU keeps 0, also on the residual
path where every contributor is zero), and a removed block is `IdentityResidual` in both.
"""
import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .choice import StructureChoice
from .derive import Structure
from .head import ATTENTION, DECODER_LAYER, MLP, TOKENS, token_setting


class IdentityResidual(nn.Module):
    """What a removed residual block leaves: its projection shortcut followed by the block's
    final ReLU, or nothing when it has no projection (its input already passed a ReLU)."""

    def __init__(self, shortcut: nn.Module = None):
        super().__init__()
        self.shortcut = shortcut

    def forward(self, x):
        return x if self.shortcut is None else torch.relu(self.shortcut(x))


class PassQuery(nn.Module):
    """What a removed decoder layer leaves: its query input, unchanged (the later layers, the
    shared final norm and the branches read it as the layer's output)."""

    def forward(self, query, *args, **kwargs):
        return query


def part_features(part, kept: list) -> torch.Tensor:
    """The feature indices of kept units (a head's `unit` consecutive features each)."""
    idx = torch.tensor(kept, dtype=torch.long)
    return (idx[:, None] * part.unit + torch.arange(part.unit)).flatten()


def _slice_part(model: nn.Module, part, kept: list) -> None:
    """Slice a head part to its kept units: an MLP's hidden features, an attention's heads
    (q/k/v output rows and out_proj input columns; the module's head count follows), the
    learnable queries of a token setting (the head's counts follow)."""
    idx = part_features(part, kept)
    if part.kind == MLP:
        _slice_layer(_get(model, part.modules[0], nn.Linear), out_idx=idx)
        _slice_layer(_get(model, part.modules[1], nn.Linear), in_idx=idx)
    elif part.kind == ATTENTION:
        for path in part.modules[:3]:
            _slice_layer(_get(model, path, nn.Linear), out_idx=idx)
        _slice_layer(_get(model, part.modules[3], nn.Linear), in_idx=idx)
        model.get_submodule(part.name).num_heads = len(kept)
    elif part.kind == TOKENS:
        model.get_submodule(part.modules[0]).prune_tokens(
            kept, *token_setting(part, len(kept))[1:])


def _resolver(structure: Structure, backbone_only: bool):
    """Map a structure name (a path in the model it was derived from) to a path in the module
    given: the same model, or its backbone alone when `backbone_only`."""
    prefix = structure.backbone + '.' if structure.backbone else ''
    if not backbone_only or not prefix:
        return lambda name: name
    return lambda name: name[len(prefix):]


def _get(model: nn.Module, path: str, kind) -> nn.Module:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f'the model has no module {path!r}: the structure was derived from '
                         'another model (or pass backbone_only for a bare backbone)') from None
    if not isinstance(module, kind):
        raise ValueError(f'{path!r} is a {type(module).__name__}, expected {kind.__name__}')
    return module


def _slice_param(tensor: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    return tensor.detach().index_select(dim, idx.to(tensor.device)).clone()


def _slice_layer(layer: nn.Module, out_idx=None, in_idx=None) -> None:
    """Keep the output rows `out_idx` and input columns `in_idx` of a Linear or a Conv2d (both
    hold outputs in dim 0 and inputs in dim 1 of their weight)."""
    out_attr, in_attr = (('out_features', 'in_features') if isinstance(layer, nn.Linear)
                         else ('out_channels', 'in_channels'))
    weight = layer.weight
    if out_idx is not None:
        weight = _slice_param(weight, 0, out_idx)
        if layer.bias is not None:
            layer.bias = nn.Parameter(_slice_param(layer.bias, 0, out_idx),
                                      layer.bias.requires_grad)
        setattr(layer, out_attr, len(out_idx))
    if in_idx is not None:
        weight = _slice_param(weight, 1, in_idx)
        setattr(layer, in_attr, len(in_idx))
    layer.weight = nn.Parameter(weight, layer.weight.requires_grad)


def _slice_bn(bn: nn.Module, idx: torch.Tensor) -> None:
    for name in ('weight', 'bias'):
        param = getattr(bn, name)
        if param is not None:
            setattr(bn, name, nn.Parameter(_slice_param(param, 0, idx), param.requires_grad))
    for name in ('running_mean', 'running_var'):
        if getattr(bn, name) is not None:
            setattr(bn, name, _slice_param(getattr(bn, name), 0, idx))
    bn.num_features = len(idx)


def _kept_indices(structure: Structure, choice: StructureChoice) -> dict:
    return {g: torch.tensor(choice.kept(structure, g), dtype=torch.long)
            for g in structure.groups}


def _replace_removed_blocks(model, structure, choice, path, backbone_only=False) -> None:
    for block in structure.blocks:
        if block.name in choice.removed_blocks and block.kind == DECODER_LAYER:
            if not backbone_only:
                model.set_submodule(block.name, PassQuery())
        elif block.name in choice.removed_blocks:
            shortcut = (nn.Sequential(*[model.get_submodule(path(p)) for p in block.shortcut])
                        if block.shortcut else None)
            model.set_submodule(path(block.name), IdentityResidual(shortcut))


def prune_copy(model: nn.Module, structure: Structure, choice: StructureChoice,
               backbone_only: bool = False) -> nn.Module:
    """A physically smaller deep copy of `model`: convs and BNs sliced to the kept channels,
    the consumers' (neck lateral convs') input channels sliced alike, head parts sliced to their
    kept units, removed blocks replaced by `IdentityResidual` (`PassQuery` for decoder layers). With `backbone_only`, `model` is the backbone alone (consumers skipped).
    """
    choice.check(structure)
    path = _resolver(structure, backbone_only)
    pruned = copy.deepcopy(model)
    kept = _kept_indices(structure, choice)
    with torch.no_grad():
        for layer in structure.layers:
            if layer.block in choice.removed_blocks:
                continue
            conv = _get(pruned, path(layer.name), nn.Conv2d)
            if conv.out_channels != layer.out_channels:
                raise ValueError(f'{layer.name} has {conv.out_channels} output channels, the '
                                 f'structure says {layer.out_channels}')
            in_idx = kept[layer.input_group] if layer.input_group else None
            _slice_layer(conv, kept[layer.group], in_idx)
            _slice_bn(_get(pruned, path(layer.bn), _BatchNorm), kept[layer.group])
        if not backbone_only:
            for consumer in structure.consumers:
                _slice_layer(_get(pruned, consumer.name, nn.Conv2d), in_idx=kept[consumer.group])
            for part in structure.valued_parts:
                if part.block not in choice.removed_blocks:
                    _slice_part(pruned, part, choice.kept(structure, part.group))
    _replace_removed_blocks(pruned, structure, choice, path, backbone_only)
    return pruned


def mask_pruned_(model: nn.Module, structure: Structure, choice: StructureChoice,
                 backbone_only: bool = False) -> nn.Module:
    """In place: zero the pruned output channels of every conv and its BN (weight, gamma,
    beta), and replace removed blocks by `IdentityResidual`. Returns `model`."""
    choice.check(structure)
    path = _resolver(structure, backbone_only)
    with torch.no_grad():
        for layer in structure.layers:
            drop = torch.ones(layer.out_channels, dtype=torch.bool)
            drop[choice.kept(structure, layer.group)] = False
            conv = _get(model, path(layer.name), nn.Conv2d)
            bn = _get(model, path(layer.bn), _BatchNorm)
            for param in (conv.weight, conv.bias, bn.weight, bn.bias):
                if param is not None:
                    param[drop.to(param.device)] = 0
    _replace_removed_blocks(model, structure, choice, path, backbone_only)
    return model
