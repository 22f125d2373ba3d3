"""The importance order JointPruning takes channels and blocks in.

`taylor_ranking` uses the Taylor saliency the MDP and HALP hooks use (`mmdp.importance`,
collected by a `SaliencyHook` before the search): a group's channels by |sum of s over its
coupled layers| (`group_scores`, `channel_order`); a block by the total |s| of its layers' channels.
A whole-detector structure's head parts go the same way (their units' gate saliency): a part's
units, a token group's learnable queries, and a decoder layer by the total value of its parts
(a removed layer loses all of them, as in the MDP program).
`bn_gamma_ranking` (backbone structures only: head units have no BN) needs no saliency window:
the L1 norm of the BatchNorm scales (|gamma|, "network slimming"), read from the weights as
loaded; a channel of a coupled group scores the sum of |gamma| over the group's BNs, a block the
mean |gamma| of the BN that closes its residual branch (the scale at which the branch adds to the
stage's output). Ties keep lower channel indices and remove later blocks first.
"""
import torch
from torch import nn

from mmdp.importance import channel_order, group_scores
from mmdp.structure import Structure

from .space import Ranking


def _block_order(stages: list, score) -> dict:
    """{stage: block names, the least important (by `score(block name)`) first}."""
    return {st.name: tuple(name for *_, name in sorted(
        (score(name), -index, name) for index, name in enumerate(st.blocks)))
        for st in stages}


def _abs_gamma(model: nn.Module, bn_name: str) -> torch.Tensor:
    bn = model.get_submodule(bn_name)
    if bn.weight is None:
        raise ValueError(f'{bn_name} has no affine scale to rank its channels by')
    return bn.weight.detach().abs().double().cpu()


def bn_gamma_ranking(model: nn.Module, structure: Structure, stages: list) -> Ranking:
    """Channel order per group and block removal order per stage of `model` (the model the
    structure was derived from), by |gamma|."""
    if structure.parts:
        raise ValueError("importance='bn_gamma' ranks BN channels only; a whole-detector "
                         "structure's head units have no BN: use importance='taylor'")
    scores = {}
    for layer in structure.layers:
        scores[layer.group] = scores.get(layer.group, 0) + _abs_gamma(model, layer.bn)
    closing = {}
    for st in stages:
        for layer in structure.layers:
            if layer.block in st.blocks and layer.group == st.residual_group:
                closing.setdefault(layer.block, []).append(layer.bn)
    for name, bns in closing.items():
        if len(bns) != 1:
            raise ValueError(f'block {name!r}: expected one conv writing to its stage\'s '
                             f'residual group, found {len(bns)}')
    return Ranking(channel_order(scores),
                   _block_order(stages, lambda b: float(_abs_gamma(model, closing[b][0]).mean())))


def taylor_ranking(structure: Structure, saliency: dict, stages: list) -> Ranking:
    """Channel order per group and block removal order per stage from Taylor saliency
    ({layer or part name: per-unit s}, e.g. `TaylorSaliency.average()`); `stages` may include
    the decoder (`PruningSpace.block_stages`)."""
    block_value = {}
    for layer in list(structure.layers) + structure.valued_parts:
        if layer.block is not None:
            value = float(torch.as_tensor(saliency[layer.name]).abs().sum())
            block_value[layer.block] = block_value.get(layer.block, 0.0) + value
    return Ranking(channel_order(group_scores(structure, saliency)),
                   _block_order(stages, block_value.__getitem__))
