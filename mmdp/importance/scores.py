"""From per-layer channel values (`TaylorSaliency.average()`) to what a solver reads: group
scores, the order in which a group's channels are kept, and each layer's value at each width of
its group."""
from typing import Callable, Optional

import numpy as np
import torch

from mmdp.structure import Structure


def _valued(structure: Structure) -> list:
    """Everything with a value per unit: prunable convs and the head's parts."""
    return list(structure.layers) + structure.valued_parts


def group_scores(structure: Structure, values: dict) -> dict:
    """{group: per-channel score}: |sum of its layers' values|. For `TaylorSaliency.average()`
    (non-negative, each layer's share of its group's score) that is the window mean of |sum of
    s over the group's layers|; for one iteration's raw s it is that iteration's score."""
    totals = {}
    for layer in _valued(structure):
        v = torch.as_tensor(values[layer.name], dtype=torch.float64)
        totals[layer.group] = totals.get(layer.group, 0) + v
    return {group: total.abs() for group, total in totals.items()}


def channel_order(scores: dict, kept: Optional[dict] = None) -> dict:
    """{group: channel indices, the first to keep first}: by descending score, with the
    channels still `kept` ({group: indices}, default all) ahead of pruned ones, so that a
    narrower width always keeps a subset of the current channels."""
    order = {}
    for group, score in scores.items():
        alive = np.ones(len(score), dtype=bool)
        if kept is not None and group in kept:
            alive[:] = False
            alive[list(kept[group])] = True
        # lexsort: the last key is the primary one; ties keep index order (stable).
        order[group] = np.lexsort((-score.numpy(), ~alive)).tolist()
    return order


def layer_values(structure: Structure, values: dict, order: dict) -> Callable:
    """`importance(layer_name, widths)` for `TableLatencyModel.to_problem`: the value of a
    layer keeping the first `w` channels of its group's order is the sum of their values in
    that layer."""
    prefix = {}
    for layer in _valued(structure):
        v = torch.as_tensor(values[layer.name], dtype=torch.float64).numpy()
        prefix[layer.name] = np.concatenate([[0.0], np.cumsum(v[order[layer.group]])])

    def importance(layer_name: str, widths) -> list:
        if layer_name not in prefix:  # a cost-only part (a neck conv)
            return [0.0] * len(widths)
        return [float(prefix[layer_name][w]) for w in widths]
    return importance
