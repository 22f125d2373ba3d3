"""The importance order JointPruning takes channels and blocks in.

Stand-in until the shared Taylor saliency (`mmdp.importance`) is wired in: the L1 norm of the
BatchNorm scales (|gamma|, "network slimming"). It needs no gradient, which matters here because
StreamPETR freezes its backbone BN (requires_grad=False), and it reads the weights as loaded.
A channel of a coupled group scores the sum of |gamma| over the group's BNs. A block scores the
mean |gamma| of the BN that closes its residual branch (the scale at which the branch adds to
the stage's output); ties remove later blocks first.
"""
import torch
from torch import nn

from mmdp.structure import Structure

from .space import Ranking


def _abs_gamma(model: nn.Module, bn_name: str) -> torch.Tensor:
    bn = model.get_submodule(bn_name)
    if bn.weight is None:
        raise ValueError(f'{bn_name} has no affine scale to rank its channels by')
    return bn.weight.detach().abs().float().cpu()


def bn_gamma_ranking(model: nn.Module, structure: Structure, stages: list) -> Ranking:
    """Channel order per group and block removal order per stage of `model` (the model the
    structure was derived from)."""
    scores = {}
    for layer in structure.layers:
        gamma = _abs_gamma(model, layer.bn)
        scores[layer.group] = scores.get(layer.group, 0) + gamma
    # Stable sort on the negated score: equal scores keep the lower channel index first.
    channels = {g: torch.argsort(-s, stable=True).tolist() for g, s in scores.items()}
    blocks = {}
    for st in stages:
        block_scores = []
        for index, name in enumerate(st.blocks):
            block = next(b for b in structure.blocks if b.name == name)
            closing = [structure.layer(n) for n in block.layers
                       if structure.layer(n).group == st.residual_group]
            if len(closing) != 1:
                raise ValueError(f'block {name!r}: expected one conv writing to the residual '
                                 f'group {st.residual_group!r}, found {len(closing)}')
            block_scores.append((float(_abs_gamma(model, closing[0].bn).mean()), -index, name))
        blocks[st.name] = tuple(name for *_, name in sorted(block_scores))
    return Ranking(channels, blocks)
