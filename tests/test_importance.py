"""Taylor saliency: the formula on frozen BN, non-finite iterations left out, the loss scale taken
off, identical totals on every DDP rank; group scores, channel order and layer values."""
import copy
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from mmdp.importance import TaylorSaliency, channel_order, group_scores, layer_values
from mmdp.structure import derive_structure

SHAPE = (2, 3, 32, 32)


def frozen_resnet():
    """A small ResNet-18 with StreamPETR's frozen BN (not trained, eval mode) and non-trivial
    affine parameters."""
    # Imported here: the DDP test's worker processes import this module and need no mmdet.
    from mmdet.models.backbones import ResNet
    torch.manual_seed(0)
    net = ResNet(depth=18, base_channels=8, out_indices=(2, 3),
                 norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    net.train()
    return net


def loss_of(net, x):
    outs = net(x)
    return sum(o.pow(2).mean() for o in (outs if isinstance(outs, tuple) else (outs, )))


def taylor_by_hand(net, structure, x) -> dict:
    """gamma * dL/dgamma + beta * dL/dbeta on a copy whose BN parameters require grad."""
    ref = copy.deepcopy(net)
    bns = {layer.name: ref.get_submodule(layer.bn) for layer in structure.layers}
    for bn in bns.values():
        bn.weight.requires_grad_(True)
        bn.bias.requires_grad_(True)
    loss_of(ref, x).backward()
    return {name: (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).detach().double()
            for name, bn in bns.items()}


def mean_of(dicts: list) -> dict:
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]}


def test_saliency_is_the_taylor_term_and_frozen_bn_stays_frozen():
    net = frozen_resnet()
    structure = derive_structure(net, SHAPE)
    frozen = {n: p.clone() for n, p in net.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    collector = TaylorSaliency(net, structure)
    collector.start()
    expected = []
    for seed in range(3):
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
        expected.append(taylor_by_hand(net, structure, x))
        collector.begin_iteration()
        loss_of(net, x).backward()
        assert collector.end_iteration()
        # Read during backward, then dropped: nothing piles up on the frozen parameters.
        assert all(net.get_parameter(n).grad is None for n in frozen)
        optimizer.step()
        optimizer.zero_grad()
    collector.stop()
    average = collector.average()
    assert collector.count == 3
    for name, value in mean_of(expected).items():
        torch.testing.assert_close(average[name], value, rtol=1e-5, atol=1e-9)
    assert any(float(v.abs().max()) > 0 for v in average.values())
    for name, before in frozen.items():
        param = net.get_parameter(name)
        assert torch.equal(param, before) and not param.requires_grad and param.grad is None


def test_non_finite_iterations_are_left_out_and_the_loss_scale_removed():
    net = frozen_resnet()
    structure = derive_structure(net, SHAPE)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    expected = taylor_by_hand(net, structure, x)
    collector = TaylorSaliency(net, structure)
    collector.start()
    collector.begin_iteration(loss_scale=1024.0)
    (1024.0 * loss_of(net, x)).backward()
    assert collector.end_iteration()
    net.zero_grad()
    collector.begin_iteration(loss_scale=1024.0)
    (loss_of(net, x) * float('inf')).backward()  # an fp16 overflow
    assert not collector.end_iteration()
    collector.stop()
    assert collector.count == 1
    for name, value in collector.average().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-9)
    collector.reset()
    with pytest.raises(RuntimeError, match='no finite saliency'):
        collector.average()


def test_checkpoint_state_round_trips():
    net = frozen_resnet()
    structure = derive_structure(net, SHAPE)
    a, b = TaylorSaliency(net, structure), TaylorSaliency(net, structure)
    a.sums.uniform_()
    a.count = 4.0
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.sums, b.sums) and b.count == 4.0
    other = FrozenPair()
    other = TaylorSaliency(other, derive_structure(other, SHAPE))
    with pytest.raises(ValueError, match='other layers'):
        other.load_state_dict(a.state_dict())


def test_group_scores_channel_order_and_layer_values():
    net = frozen_resnet()
    structure = derive_structure(net, SHAPE)
    gen = torch.Generator().manual_seed(0)
    saliency = {layer.name: torch.randn(layer.out_channels, generator=gen, dtype=torch.float64)
                for layer in structure.layers}
    scores = group_scores(structure, saliency)
    residual = [layer.name for layer in structure.layers if layer.group == 'layer3.residual']
    assert residual == ['layer3.0.conv2', 'layer3.0.downsample.0', 'layer3.1.conv2']
    torch.testing.assert_close(scores['layer3.residual'],
                               sum(saliency[n] for n in residual).abs())
    torch.testing.assert_close(scores['layer3.0.conv1'], saliency['layer3.0.conv1'].abs())

    group = 'layer3.residual'
    kept = [0, 5, 7, 9, 20, 31]
    order = channel_order(scores, {group: kept})
    first = order[group][:len(kept)]
    assert sorted(first) == kept
    assert list(scores[group][first]) == sorted(scores[group][kept].tolist(), reverse=True)
    rest = order[group][len(kept):]
    assert list(scores[group][rest]) == sorted(scores[group][rest].tolist(), reverse=True)
    unconstrained = channel_order(scores)['layer3.0.conv1']
    assert unconstrained == np.argsort(-scores['layer3.0.conv1'].numpy(), kind='stable').tolist()

    importance = layer_values(structure, saliency, order)
    s = saliency['layer3.1.conv2'].abs()
    assert importance('layer3.1.conv2', [0, 6, 32]) == pytest.approx(
        [0.0, float(s[first].sum()), float(s.sum())])


class FrozenPair(nn.Sequential):
    """Two conv-BN-ReLU layers with frozen BN, light enough for the worker processes."""

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        with torch.no_grad():
            for bn in (self[1], self[4]):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.2)
                bn.weight.requires_grad_(False)
                bn.bias.requires_grad_(False)
        self.eval()  # frozen statistics, as norm_eval


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _inputs(rank: int, iteration: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 * rank + iteration))


OVERFLOW = (1, 1)  # (rank, iteration) whose saliency is not finite


def _collect_on_rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        net = FrozenPair()
        collector = TaylorSaliency(net, derive_structure(net, SHAPE))
        collector.start()
        for it in range(3):
            collector.begin_iteration()
            loss = loss_of(net, _inputs(rank, it))
            (loss * float('inf') if (rank, it) == OVERFLOW else loss).backward()
            collector.end_iteration()
            net.zero_grad()
        torch.save({'sums': collector.sums, 'count': collector.count}, f'{out}/rank{rank}.pt')
    finally:
        torch_dist.destroy_process_group()


def test_ranks_hold_identical_totals_without_non_finite_iterations(tmp_path):
    mp.spawn(_collect_on_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    assert torch.equal(ranks[0]['sums'], ranks[1]['sums'])
    assert ranks[0]['count'] == ranks[1]['count'] == 5
    net = FrozenPair()
    structure = derive_structure(net, SHAPE)
    expected = mean_of([taylor_by_hand(net, structure, _inputs(r, it))
                        for r in range(2) for it in range(3) if (r, it) != OVERFLOW])
    collector = TaylorSaliency(net, structure)
    collector.load_state_dict({**ranks[0], 'layers': collector.sizes})
    for name, value in collector.average().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-9)
