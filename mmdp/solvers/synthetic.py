"""Synthetic problems for tests and benchmarks: ResNet-shaped ones and tiny random ones."""
import itertools

import numpy as np

from .problem import Problem

RESNETS = {  # depth -> (bottleneck?, blocks per stage), torchvision / mmdet ResNet
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}


def _importance(rng, channels: int, widths: list, scale: float = 1.0) -> list:
    """Sum of the top-w channel scores for each width: heavy-tailed scores, sorted."""
    scores = np.sort(rng.lognormal(0.0, 1.0, channels))[::-1] * scale * rng.lognormal(0.0, 0.5)
    prefix = np.concatenate([[0.0], np.cumsum(scores)])
    return [float(prefix[w]) for w in widths]


def resnet_problem(depth: int = 50, chunk: int = 32, removable_blocks: bool = True,
                   budget_ratio: float = 0.55, image_size=(256, 704), seed: int = 0) -> Problem:
    """A problem shaped like a ResNet backbone.

    One group per inner conv of a block, one residual group per stage shared by the downsample
    conv and every block's last conv (for BasicBlock ResNets without a stage-1 downsample, the
    stem joins stage 1's residual group). The stem's group keeps its full width, as
    `Structure.fixed_groups` has it. The downsample conv is not part of its block. Latency
    is about c_in * c_out * k^2 * H * W plus a per-layer launch constant, with 5% noise, scaled so
    the dense backbone takes about 5 ms; channel scores fall by 0.75 per block within a stage.
    Budget = `budget_ratio` x dense.
    """
    if depth not in RESNETS:
        raise ValueError(f'resnet depth {depth} is not one of {sorted(RESNETS)}')
    rng = np.random.default_rng(seed)
    bottleneck, stage_blocks = RESNETS[depth]
    expansion = 4 if bottleneck else 1
    groups, convs, blocks = {}, [], []

    def add_group(name, channels):
        if channels % chunk:
            raise ValueError(f'{channels} channels are not a multiple of chunk {chunk}')
        groups[name] = [channels] if name == stem else list(range(chunk, channels + 1, chunk))

    def add_conv(name, group, input_group, block, c_in, c_out, kernel, pixels, scale=1.0):
        convs.append((name, group, input_group, block, c_in, c_out, kernel, pixels, scale))

    h, w = image_size[0] // 2, image_size[1] // 2
    stem = 'backbone.layer1.residual' if not bottleneck else 'backbone.conv1'
    add_group(stem, 64)
    add_conv('backbone.conv1', stem, None, None, 3, 64, 7, h * w)
    h, w = h // 2, w // 2  # max-pool
    previous, c_prev = stem, 64
    for s, n_blocks in enumerate(stage_blocks, start=1):
        planes = 64 * 2 ** (s - 1)
        residual = f'backbone.layer{s}.residual'
        if residual not in groups:
            add_group(residual, planes * expansion)
        stride = 1 if s == 1 else 2
        h_out, w_out = h // stride, w // stride
        if stride != 1 or c_prev != planes * expansion:
            add_conv(f'backbone.layer{s}.0.downsample.0', residual, previous, None,
                     c_prev, planes * expansion, 1, h_out * w_out)
        for i in range(n_blocks):
            block = f'backbone.layer{s}.{i}'
            blocks.append(block)
            source = previous if i == 0 else residual
            c_in = c_prev if i == 0 else planes * expansion
            pix_in = h * w if i == 0 else h_out * w_out
            # Later blocks of a stage refine less: their channels score lower.
            scale = 0.75 ** i
            add_group(f'{block}.conv1', planes)
            if bottleneck:
                add_group(f'{block}.conv2', planes)
                add_conv(f'{block}.conv1', f'{block}.conv1', source, block, c_in, planes, 1,
                         pix_in, scale)
                add_conv(f'{block}.conv2', f'{block}.conv2', f'{block}.conv1', block, planes,
                         planes, 3, h_out * w_out, scale)
                add_conv(f'{block}.conv3', residual, f'{block}.conv2', block, planes,
                         planes * expansion, 1, h_out * w_out, scale)
            else:
                add_conv(f'{block}.conv1', f'{block}.conv1', source, block, c_in, planes, 3,
                         h_out * w_out, scale)
                add_conv(f'{block}.conv2', residual, f'{block}.conv1', block, planes, planes,
                         3, h_out * w_out, scale)
        previous, c_prev, h, w = residual, planes * expansion, h_out, w_out

    # Dense FLOP-proportional part 4 ms in all, plus 20 us of launch cost per layer.
    dense_flops = sum(ci * co * k * k * p for _, _, _, _, ci, co, k, p, _ in convs)
    per_flop, constant = 4.0 / dense_flops, 0.02
    layers = []
    for name, group, input_group, block, c_in, c_out, kernel, pixels, scale in convs:
        outs = np.array(groups[group], dtype=float)
        ins = np.array(groups[input_group] if input_group else [c_in], dtype=float)
        table = per_flop * np.outer(outs, ins) * kernel * kernel * pixels + constant
        table *= rng.lognormal(0.0, 0.05, table.shape)
        layers.append(dict(name=name, group=group, input_group=input_group, block=block,
                           importance=_importance(rng, c_out, groups[group], scale),
                           latency=table[:, 0].tolist() if input_group is None
                           else table.tolist()))
    data = dict(version=1, budget=0.0, groups={g: dict(widths=ws) for g, ws in groups.items()},
                layers=layers, blocks=blocks if removable_blocks else [],
                meta=dict(source=f'synthetic ResNet-{depth}', chunk=chunk, seed=seed))
    problem = Problem.from_dict(data)
    return problem.with_budget(budget_ratio * problem.dense_latency())


# StreamPETR's token settings (num_query, num_propagated, memory_len), the dense one last; the
# group's width is the setting's number of learnable queries (docs/problem-format.md).
TOKEN_SETTINGS = ((100, 32, 128), (150, 64, 256), (200, 64, 384), (250, 128, 512),
                  (300, 128, 512))
TOKEN_COUNTS = ('num_query', 'num_propagated', 'memory_len')


def _head_layers(rng, chunk: int, per_flop: float, constant: float, tokens: int = 4224,
                 settings=TOKEN_SETTINGS, layers: int = 6, embed: int = 256,
                 hidden: int = 1024, ffn: int = 2048, heads: int = 8, head_dims: int = 32,
                 pe_in: int = 192, classes: int = 10) -> tuple:
    """(groups, layers, blocks) of StreamPETR's head at its published shapes: the position
    encoder over every image token, the token setting (learnable queries, propagated queries,
    memory length) as one group, and per decoder layer an FFN and a self- and a
    cross-attention whose head counts are chosen one by one; every decoder part's cost is a
    table over (its width, the token setting)."""
    groups, out, blocks = {}, [], []
    queries = np.array([q + p for q, p, _ in settings], dtype=float)  # queries per setting
    keys = np.array([q + m for q, _, m in settings], dtype=float)  # self-attention keys

    def add(name, group, block, widths, macs, units, kind, unit=1, tokens=True):
        """`macs(width)`: multiply-accumulates at each token setting (or a number)."""
        groups[group] = dict(widths=widths, kind=kind, unit=unit)
        cost = per_flop * np.array([np.broadcast_to(macs(w), len(settings) if tokens else ())
                                    for w in widths], dtype=float) + constant
        cost *= rng.lognormal(0.0, 0.05, cost.shape)
        out.append(dict(name=name, group=group, input_group='head.tokens' if tokens else None,
                        block=block, importance=_importance(rng, units, widths),
                        latency=cost.tolist()))
    add('head.position_encoder', 'head.position_encoder.hidden', None,
        list(range(chunk, hidden + 1, chunk)), lambda w: tokens * (pe_in + embed) * w, hidden,
        'hidden', tokens=False)
    # The token setting's own layer: the query embedding over the learnable queries and the
    # memory, the shared class and box branches over every layer's queries.
    nq, npr, ml = (np.array(c) for c in zip(*settings))
    full_q, full_p, full_m = settings[-1]
    value = (np.array(_importance(rng, full_q, nq.tolist()))
             + np.array(_importance(rng, full_m, npr.tolist()))
             + np.array(_importance(rng, full_m, ml.tolist())))
    macs = keys * (embed * 3 // 2 + embed) * embed + layers * queries * embed * (
        4 * embed + classes + 10)
    cost = (per_flop * macs + constant) * rng.lognormal(0.0, 0.05, len(settings))
    groups['head.tokens'] = dict(widths=nq.tolist(), kind='tokens', unit=1,
                                 settings=[dict(zip(TOKEN_COUNTS, map(int, s)))
                                           for s in settings])
    out.append(dict(name='head.tokens', group='head.tokens', input_group=None, block=None,
                    importance=value.tolist(), latency=cost.tolist()))
    for i in range(layers):
        block = f'head.decoder.layers.{i}'
        blocks.append(block)
        add(f'{block}.ffn', f'{block}.ffn.hidden', block, list(range(chunk, ffn + 1, chunk)),
            lambda w: queries * 2 * embed * w, ffn, 'hidden')
        for name, k in (('self_attn', keys), ('cross_attn', tokens)):
            # q and out projections over the queries, k and v over the keys, QK^T and AV.
            add(f'{block}.{name}', f'{block}.{name}.heads', block, list(range(1, heads + 1)),
                lambda w, k=k: head_dims * w * (2 * queries * embed + 2 * k * embed
                                                + 2 * queries * k), heads, 'heads', head_dims)
    return groups, out, blocks


def whole_detector_problem(depth: int = 50, chunk: int = 32, budget_ratio: float = 0.55,
                           seed: int = 0) -> Problem:
    """`resnet_problem`'s backbone, the neck's lateral convs (1x1 to 256 channels from the
    stride-16 and stride-32 stages, cost per backbone width) and StreamPETR's head
    (`_head_layers`, token settings included) at 704x256, with the same cost per
    multiply-accumulate and launch constant, in one version-2 problem. Budget =
    `budget_ratio` x dense."""
    backbone = resnet_problem(depth, chunk, True, 1.0, seed=seed).to_dict()
    rng = np.random.default_rng(seed + 1)
    bottleneck, _ = RESNETS[depth]
    c4 = 64 * 2 ** 3 * (4 if bottleneck else 1)
    c3 = c4 // 2
    # resnet_problem times one view's backbone; the head's shapes hold all six views.
    per_flop, constant = _per_flop(depth), 0.02
    layers = list(backbone['layers'])
    groups = {g: dict(spec, kind='channels', unit=1) for g, spec in backbone['groups'].items()}
    for s, (c, pixels) in ((3, (c3, 16 * 44)), (4, (c4, 8 * 22))):
        group = f'backbone.layer{s}.residual'
        ws = np.asarray(groups[group]['widths'], dtype=float)
        cost = (per_flop * pixels * 256 * ws + constant) * rng.lognormal(0.0, 0.05, len(ws))
        layers.append(dict(name=f'neck.lateral_convs.{s - 3}', group=group, input_group=None,
                           block=None, importance=[0.0] * len(ws), latency=cost.tolist()))
    head_groups, head_layers, head_blocks = _head_layers(rng, chunk, per_flop / 6, constant)
    groups.update(head_groups)
    data = dict(version=2, budget=0.0, groups=groups, layers=layers + head_layers,
                blocks=backbone['blocks'] + head_blocks,
                meta=dict(source=f'synthetic StreamPETR, ResNet-{depth}', chunk=chunk,
                          seed=seed))
    problem = Problem.from_dict(data)
    return problem.with_budget(budget_ratio * problem.dense_latency())


def _per_flop(depth: int, image_size=(256, 704)) -> float:
    """resnet_problem's ms per multiply-accumulate (its convs of one view take 4 ms dense)."""
    bottleneck, stage_blocks = RESNETS[depth]
    expansion = 4 if bottleneck else 1
    h, w = image_size[0] // 2, image_size[1] // 2
    flops = 3 * 64 * 49 * h * w
    h, w, c_prev = h // 2, w // 2, 64
    for s, n in enumerate(stage_blocks, start=1):
        planes, stride = 64 * 2 ** (s - 1), 1 if s == 1 else 2
        h2, w2 = h // stride, w // stride
        if stride != 1 or c_prev != planes * expansion:
            flops += c_prev * planes * expansion * h2 * w2
        for i in range(n):
            c_in, pix = (c_prev, h * w) if i == 0 else (planes * expansion, h2 * w2)
            if bottleneck:
                flops += (c_in * planes * pix + planes * planes * 9 * h2 * w2
                          + planes * planes * expansion * h2 * w2)
            else:
                flops += c_in * planes * 9 * h2 * w2 + planes * planes * 9 * h2 * w2
        c_prev, h, w = planes * expansion, h2, w2
    return 4.0 / flops


def random_problem(rng: np.random.Generator, max_groups: int = 4, max_widths: int = 4,
                   max_layers: int = 6, max_blocks: int = 2, coupling: bool = True,
                   monotone: bool = False, integer: bool = False,
                   budget_span=(-0.15, 1.0), tokens: bool = False) -> Problem:
    """A tiny random problem, small enough for the exhaustive solver.

    `coupling`: layers may read an input group; `monotone`: latency grows with both widths;
    `integer`: integer latency entries (so that a knapsack at resolution 1 is exact). The
    budget lies at a random point of `budget_span` between the smallest latency reachable (0)
    and the dense latency (1): below 0 it is infeasible. `tokens`: one more group, 'tokens', of
    kind 'tokens' (2 or 3 settings of num_query and memory_len), which the last layer reads as
    its input (a decoder part's T[width][token setting]); a version-2 problem.
    """
    n_groups = int(rng.integers(1, max_groups + 1))
    groups = {}
    for g in range(n_groups):
        n = int(rng.integers(1, max_widths + 1))
        groups[f'g{g}'] = sorted(rng.choice(np.arange(1, 9), size=n, replace=False).tolist())
    if tokens:
        groups['tokens'] = sorted(rng.choice(np.arange(1, 9), size=int(rng.integers(2, 4)),
                                             replace=False).tolist())
        n_groups += 1
    names = list(groups)
    n_blocks = int(rng.integers(0, max_blocks + 1))
    block_names = [f'b{b}' for b in range(n_blocks)]
    n_layers = max(int(rng.integers(1, max_layers + 1)), n_blocks)
    layers = []
    for i in range(n_layers):
        group = names[int(rng.integers(n_groups))]
        input_group = (names[int(rng.integers(n_groups))]
                       if coupling and rng.random() < 0.7 else None)
        if tokens and i == n_layers - 1:
            group, input_group = names[int(rng.integers(n_groups - 1))], 'tokens'
        # Every listed block gets a layer; other layers may sit in an unlisted block.
        block = (block_names[i] if i < n_blocks else
                 rng.choice(block_names + [None, 'fixed']) if n_blocks else None)
        k, j = len(groups[group]), len(groups[input_group]) if input_group else 1
        importance = np.cumsum(rng.uniform(0.1, 5.0, k))
        if monotone:
            table = np.cumsum(np.cumsum(rng.uniform(0.0, 3.0, (k, j)), 0), 1) + 1.0
        else:
            table = rng.uniform(0.5, 6.0, (k, j))
        if integer:
            table = np.round(table * 4)
        layers.append(dict(name=f'l{i}', group=group, input_group=input_group,
                           block=None if block is None else str(block),
                           importance=importance.tolist(),
                           latency=table[:, 0].tolist() if input_group is None
                           else table.tolist()))
    data = dict(version=1, budget=0.0, groups={g: dict(widths=ws) for g, ws in groups.items()},
                layers=layers, blocks=block_names)
    if tokens:
        data['version'] = 2
        data['groups']['tokens'].update(kind='tokens', settings=[
            dict(num_query=w, memory_len=2 * w) for w in groups['tokens']])
    problem = Problem.from_dict(data)
    smallest = min(problem.evaluate(dict(zip(names, ws)), removed)[1]
                   for ws in itertools.product(*groups.values())
                   for n in range(n_blocks + 1)
                   for removed in itertools.combinations(block_names, n))
    dense = problem.dense_latency()
    budget = smallest + rng.uniform(*budget_span) * (dense - smallest)
    return problem.with_budget(float(np.round(budget)) if integer else budget)
