"""From per-layer channel values (`TaylorSaliency.average()`) to what a solver reads: group
scores, the order in which a group's channels are kept, and each layer's value at each width of
its group."""
from typing import Callable, Optional

import numpy as np
import torch

from mmdp.structure import Structure
from mmdp.structure.head import TOKENS, token_setting


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
    # A token group ranks its learnable queries only: its memory slots are kept by position.
    return {group: total[:structure.groups[group]].abs() for group, total in totals.items()}


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
    prefix, tokens = {}, {}
    for layer in _valued(structure):
        v = torch.as_tensor(values[layer.name], dtype=torch.float64).numpy()
        prefix[layer.name] = np.concatenate([[0.0], np.cumsum(v[order[layer.group]])])
        if getattr(layer, 'kind', None) == TOKENS:
            tokens[layer.name] = (layer, np.concatenate([[0.0], np.cumsum(v[len(order[
                layer.group]):])]))

    def importance(layer_name: str, widths) -> list:
        if layer_name in tokens:
            return [token_value(*tokens[layer_name], prefix[layer_name], w) for w in widths]
        if layer_name not in prefix:  # a cost-only part (a neck conv)
            return [0.0] * len(widths)
        return [float(prefix[layer_name][w]) for w in widths]
    return importance


def token_value(part, slots: np.ndarray, queries: np.ndarray, width: int) -> float:
    """The value of the token setting with `width` learnable queries: its top learnable
    queries (`queries`: prefix sums in importance order), its propagated slots and its older
    memory slots (`slots`: prefix sums in slot order), each slot valued in the role it had in
    the window: a propagated slot that a smaller setting demotes to a key-only one counts as
    lost (its value as a key alone was not measured)."""
    return float(queries[token_setting(part, width)[0]]) + slot_value(part, slots, width)


def slot_value(part, slots: np.ndarray, width: int) -> float:
    """The memory slots' share of `token_value` (`slots`: prefix sums in slot order)."""
    _, num_propagated, memory_len = token_setting(part, width)
    dense_propagated = part.settings[-1][1]
    older = max(memory_len, dense_propagated)
    return float(slots[num_propagated] + slots[older] - slots[dense_propagated])
