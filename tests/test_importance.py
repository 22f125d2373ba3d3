"""Taylor saliency as the official MDP / HALP code computes it: the formula on frozen BN, |.| every
iteration, a coupled group's |sum of s| shared among its layers by |s_l|, non-finite iterations
left out, the loss scale taken off, identical totals on every DDP rank; group scores, channel
order and layer values; the problem a pruning event builds from them."""
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
from mmdp.latency import LATENCY_MODELS, LatencyTable, make_meta
from mmdp.pruning import build_problem
from mmdp.solvers import ProblemError
from mmdp.structure import StructureChoice, derive_structure

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


def members(structure) -> dict:
    groups = {}
    for layer in structure.layers:
        groups.setdefault(layer.group, []).append(layer.name)
    return groups


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
    # A group's layers add up to the window mean of |sum of s| (a lone layer: of |s|).
    coupled = 0
    for group, names in members(structure).items():
        want = mean_of([{group: sum(e[n] for n in names).abs()} for e in expected])[group]
        torch.testing.assert_close(sum(average[n] for n in names), want, rtol=1e-5, atol=1e-9)
        coupled += len(names) > 1
    assert coupled == 4  # the residual groups of the four stages
    assert all(float(v.min()) >= 0 for v in average.values())
    assert any(float(v.max()) > 0 for v in average.values())
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
    average = collector.average()
    for names in members(structure).values():
        torch.testing.assert_close(sum(average[n] for n in names),
                                   sum(expected[n] for n in names).abs(), rtol=1e-5, atol=1e-9)
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
    # The sums of the mean of s (the collector before |.| was taken every iteration).
    old = {k: v for k, v in a.state_dict().items() if k != 'statistic'}
    with pytest.raises(ValueError, match='another statistic'):
        b.load_state_dict(old)
    other = FrozenPair()
    other = TaylorSaliency(other, derive_structure(other, SHAPE))
    with pytest.raises(ValueError, match='other layers'):
        other.load_state_dict(a.state_dict())


RESIDUAL = ['layer3.0.conv2', 'layer3.0.downsample.0', 'layer3.1.conv2']
LONE = 'layer3.0.conv1'


def hand_iterations(collector) -> list:
    """Two iterations of flat s, zero but for channels 0 and 1 of layer 3's residual group and
    channel 0 of a lone conv."""
    iterations = []
    for conv2, down, conv2b, lone in (([1., -2.], [3., 1.], [0., 0.], 2.),
                                      ([-1., 2.], [1., 1.], [2., 0.], -2.)):
        s = torch.zeros_like(collector.sums)
        for name, values in zip(RESIDUAL, (conv2, down, conv2b)):
            s[collector.offsets[name]:collector.offsets[name] + 2] = torch.tensor(values)
        s[collector.offsets[LONE]] = lone
        iterations.append(s)
    return iterations


def test_values_by_hand():
    """Per iteration, channel 0 of the residual group scores |1 + 3 + 0| = 4, shared 1 : 3 : 0,
    then |-1 + 1 + 2| = 2, shared 0.5 : 0.5 : 1; channel 1 scores |-2 + 1| = 1 shared 2/3 : 1/3
    : 0, then |2 + 1| = 3 shared 2 : 1 : 0. The lone conv: |2| and |-2|. Window means:"""
    net = frozen_resnet()
    structure = derive_structure(net, SHAPE)
    assert members(structure)['layer3.residual'] == RESIDUAL
    collector = TaylorSaliency(net, structure)
    for s in hand_iterations(collector):
        assert collector.add(s)
    assert collector.count == 2
    values = collector.average()
    want = {'layer3.0.conv2': [0.75, 4 / 3], 'layer3.0.downsample.0': [1.75, 2 / 3],
            'layer3.1.conv2': [0.5, 0.0]}
    for name, pair in want.items():
        np.testing.assert_allclose(values[name][:2].numpy(), pair, rtol=1e-12)
        assert not values[name][2:].any()
    assert values[LONE][0] == 2.0  # the mean of s then |.| would give 0
    assert not values[LONE][1:].any()
    assert not any(values[n].any() for n in values if n not in RESIDUAL + [LONE])

    scores = group_scores(structure, values)
    np.testing.assert_allclose(scores['layer3.residual'][:2].numpy(), [3.0, 2.0], rtol=1e-12)
    order = channel_order(scores)
    assert order['layer3.residual'][:3] == [0, 1, 2]  # then the zero channels in index order
    importance = layer_values(structure, values, order)
    assert importance('layer3.0.downsample.0', [0, 1, 2, 32]) == pytest.approx(
        [0.0, 1.75, 1.75 + 2 / 3, 1.75 + 2 / 3], rel=1e-12)


def test_channel_order_keeps_current_channels_first():
    scores = {'g': torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0, 0.5], dtype=torch.float64)}
    assert channel_order(scores)['g'] == [0, 2, 3, 4, 1, 5]
    # Channels 1, 3 and 5 are still kept: they come first, each part by descending score.
    assert channel_order(scores, {'g': [1, 3, 5]})['g'] == [3, 1, 5, 0, 2, 4]


def hand_table(structure) -> LatencyTable:
    """A latency table with made-up conv timings (no profiling needed)."""
    meta = make_meta('cpu', 'fp32', SHAPE, 4, 'torch', repeats=1, warmup=0)
    table = LatencyTable.new(structure, meta)
    for layer in structure.layers:
        ins = table.widths[layer.input_group] if layer.input_group else [layer.in_channels]
        rows = [[1e-4 * o * i + 1e-3 for i in ins] for o in table.widths[layer.group]]
        table.tables[layer.name] = rows if layer.input_group else [r[0] for r in rows]
    table.dense_ms = 1.0
    return table


def test_event_problem_keeps_the_stem_whole_and_refuses_negative_values():
    """The problem of a pruning event (the PruningHook's path): the stem's group has its full
    width only (in a BasicBlock ResNet the stem's output is added to stage 1's: one group); a
    negative value is refused by the problem validation, naming layer and value."""
    net = frozen_resnet()
    structure = derive_structure(net, SHAPE)
    assert structure.fixed_groups == ['layer1.residual']
    model = LATENCY_MODELS.build(dict(type='lut_bilinear', table=hand_table(structure),
                                      fitted=False))
    collector = TaylorSaliency(net, structure)
    for s in hand_iterations(collector):
        collector.add(s)
    values = collector.average()
    problem, order = build_problem(model, structure, values, StructureChoice(), 0.5, 4)
    assert problem.groups['layer1.residual'] == [8]
    assert problem.groups['layer1.0.conv1'] == [4, 8]
    assert problem.groups['layer3.residual'] == list(range(4, 33, 4))
    assert order['layer3.residual'][:2] == [0, 1]
    values['layer3.1.conv2'] = values['layer3.1.conv2'].clone()
    values['layer3.1.conv2'][0] = -0.5
    with pytest.raises(ProblemError, match=r"layer 'layer3.1.conv2': importance must not be "
                       r"negative, found -0.5 at width 4 of group 'layer3.residual'"):
        build_problem(model, structure, values, StructureChoice(), 0.5, 4)


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
    """s is averaged over the ranks before |.| (the s of DDP's averaged gradient); the iteration
    that overflowed on rank 1 is left out on both."""
    mp.spawn(_collect_on_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    assert torch.equal(ranks[0]['sums'], ranks[1]['sums'])
    assert ranks[0]['count'] == ranks[1]['count'] == 2
    net = FrozenPair()
    structure = derive_structure(net, SHAPE)
    expected = mean_of([
        {k: v.abs() for k, v in mean_of([taylor_by_hand(net, structure, _inputs(r, it))
                                         for r in range(2)]).items()}
        for it in range(3) if it != OVERFLOW[1]])
    collector = TaylorSaliency(net, structure)
    collector.load_state_dict({**ranks[0], 'layers': collector.sizes,
                               'statistic': collector.state_dict()['statistic']})
    for name, value in collector.average().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-9)
