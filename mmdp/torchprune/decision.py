"""Torch-Pruning's decision, translated into an mmdp structure choice.

Torch-Pruning (`torch-pruning` on PyPI) traces a deep copy of the backbone and the neck (its
`DependencyGraph`), ranks every coupled channel group with `GroupTaylorImportance` and prunes
globally (`MetaPruner(global_pruning=True)`) with kept widths rounded down to `round_to`. The
stem's group and every layer of the neck are ignored as roots, as mmdp's structure keeps them
(the neck's lateral convs still lose the input columns of pruned backbone channels, and their
Taylor terms count towards those channels). Blocks are never removed (Torch-Pruning keeps every
layer). The channels it prunes become a `StructureChoice` whose masks and export are mmdp's own.
"""
import copy
from typing import Callable, Optional

import torch
from torch import nn

from mmdp.structure import Structure, StructureChoice

INSTALL_HINT = ("pip install -c constraints.txt -e '.[torch-pruning]'")


def torch_pruning():
    """The `torch_pruning` module, or an ImportError saying how to install the extra."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise ImportError(f'the Torch-Pruning baseline needs the torch-pruning package: '
                          f'{INSTALL_HINT}') from None
    return tp


def _neck_path(structure: Structure) -> Optional[str]:
    paths = {c.name.split('.')[0] for c in structure.consumers}
    if len(paths) > 1:
        raise ValueError(f'the backbone outputs are read by several modules {sorted(paths)}; '
                         'one neck is supported')
    return paths.pop() if paths else None


class PruningView(nn.Module):
    """Deep copies of a detector's backbone and neck (at the detector's module paths, so that
    structure names are paths here too), `neck(backbone(x))`: what Torch-Pruning traces."""

    def __init__(self, model: nn.Module, structure: Structure):
        super().__init__()
        if not structure.backbone or '.' in structure.backbone:
            raise ValueError('the Torch-Pruning baseline needs a detector whose backbone is a '
                             f'top-level module, found {structure.backbone!r}')
        if structure.parts:
            raise ValueError('the Torch-Pruning baseline prunes the backbone (and the neck\'s '
                             'inputs) only: unset prunable_head')
        self.backbone_path, self.neck_path = structure.backbone, _neck_path(structure)
        for path in (self.backbone_path, self.neck_path):
            if path:
                self.add_module(path, copy.deepcopy(model.get_submodule(path)))
        for module in self.modules():  # checkpointing hides the graph from the trace
            if getattr(module, 'with_cp', False) is True:
                module.with_cp = False
        self.eval()

    def forward(self, x):
        out = self.get_submodule(self.backbone_path)(x)
        if self.neck_path is None:
            return out
        return self.get_submodule(self.neck_path)(tuple(out))

    def set_gradients(self, gradients: dict) -> None:
        """Give the convs at the names of `gradients` these weight gradients."""
        for name, grad in gradients.items():
            weight = self.get_submodule(name).weight
            weight.grad = grad.to(weight)


def ignored_layers(view: PruningView, structure: Structure) -> list:
    """What Torch-Pruning must not prune as a root: the stem's convs and the whole neck."""
    fixed = set(structure.fixed_groups)
    ignored = [view.get_submodule(layer.name) for layer in structure.layers
               if layer.group in fixed]
    if view.neck_path:
        ignored.append(view.get_submodule(view.neck_path))
    return ignored


def example_input(view: PruningView, structure: Structure) -> torch.Tensor:
    """One image at the structure's input size: the trace needs shapes, not a batch."""
    param = next(view.parameters())
    return torch.randn((1, *structure.input_shape[1:]), device=param.device, dtype=param.dtype)


def tp_choice(view: PruningView, structure: Structure, ratio: float, round_to: int,
              importance_cfg: Optional[dict] = None, prune: bool = False) -> StructureChoice:
    """The structure choice of Torch-Pruning at global `pruning_ratio=ratio`. With `prune`,
    Torch-Pruning also prunes `view` physically (then it cannot be used again)."""
    tp = torch_pruning()
    pruner = tp.pruner.MetaPruner(
        view, example_input(view, structure),
        importance=tp.importance.GroupTaylorImportance(**(importance_cfg or {})),
        global_pruning=True, pruning_ratio=float(ratio), round_to=int(round_to),
        ignored_layers=ignored_layers(view, structure))
    names = {module: name for name, module in view.named_modules()}
    pruned = {}
    for group in pruner.step(interactive=True):
        for item in group:
            module = item.dep.target.module
            # A group with no channel under the threshold comes with empty indices.
            if (len(item.idxs) and isinstance(module, nn.Conv2d)
                    and pruner.DG.is_out_channel_pruning_fn(item.dep.handler)):
                pruned[names[module]] = sorted(int(i) for i in item.idxs)
        if prune:
            group.prune()
    return choice_from_pruned(structure, pruned)


def choice_from_pruned(structure: Structure, pruned: dict) -> StructureChoice:
    """{conv name: pruned output channels} -> a choice; every conv of a group must lose the same
    channels, and only convs of the structure's prunable groups may lose any."""
    layers = {layer.name: layer for layer in structure.layers}
    unknown = sorted(set(pruned) - set(layers))
    if unknown:
        raise ValueError(f'Torch-Pruning pruned the output channels of {unknown[0]}, which '
                         "is not a prunable conv of mmdp's structure")
    by_group = {}
    for name, idx in pruned.items():
        by_group.setdefault(layers[name].group, {})[name] = idx
    fixed = set(structure.fixed_groups)
    widths, channels = {}, {}
    for group, convs in by_group.items():
        sets = {tuple(idx) for idx in convs.values()}
        members = [layer.name for layer in structure.layers if layer.group == group]
        if group in fixed or len(sets) != 1 or len(convs) != len(members):
            raise ValueError(f"Torch-Pruning's coupling differs from mmdp's for group {group!r}: "
                             f'pruned channels per conv {convs} (group convs {members})')
        drop = set(sets.pop())
        full = structure.groups[group]
        channels[group] = [c for c in range(full) if c not in drop]
        widths[group] = len(channels[group])
    return StructureChoice(widths, (), channels)


def find_ratio(latency_of: Callable[[float], float], budget: float, grid: float = 0.05,
               tol: float = 1e-4) -> tuple:
    """The smallest pruning ratio whose latency fits `budget`, to `tol`: the first point of the
    grid grid, 2 grid, ... below 1 that fits, then bisection between it and the point before
    (the scan, not a bisection from 1, because Torch-Pruning leaves a group whole when rounding
    would empty it, so very large ratios can be slower). Returns (ratio, evaluations), the
    evaluations as [ratio, latency] in the order made; latency(ratio) <= budget and
    latency(ratio - tol') > budget for the last bracket width tol' <= tol.
    Raises ValueError when no grid point fits."""
    if not 0 < grid < 1 or not 0 < tol <= grid:
        raise ValueError(f'ratio search: need 0 < tol <= grid < 1, found grid={grid}, tol={tol}')
    evaluations = []

    def fits(ratio: float) -> bool:
        latency = float(latency_of(ratio))
        evaluations.append([ratio, latency])
        return latency <= budget

    lo, hi, k = 0.0, None, 1
    while k * grid < 1:
        if fits(k * grid):
            hi = k * grid
            break
        lo, k = k * grid, k + 1
    if hi is None:
        best = min(evaluations, key=lambda e: e[1])
        raise ValueError(f'no Torch-Pruning ratio reaches the latency budget {budget:.6g} ms: '
                         f'the smallest latency over ratios {grid:g}..{lo:g} is {best[1]:.6g} ms '
                         f'(ratio {best[0]:g})')
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi, evaluations
