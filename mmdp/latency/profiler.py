"""Fill a latency table: time every prunable conv over its (output, input) width grid, time
sampled pruned backbones end to end, fit the LUT models' overhead terms. Every step saves the
table through `save`, and a table loaded from an interrupted run resumes where it stopped."""
import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import torch.nn.functional as F

from mmdp.structure import Structure, StructureChoice
from mmdp.structure.head import (ATTENTION, MLP, NECK_CONV, TOKENS, at_setting, token_part,
                                 token_setting)

from .models import (TERMS, BilinearLutLatency, LinearLutLatency, MeasuredLatency,
                     fit_overheads)
from .table import LatencyTable
from .timer import Timer


def _conv_key(layer, w_out: int, w_in: int) -> tuple:
    n, _, h, w = layer.input_shape
    return (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.bias,
            n, h, w, w_in, w_out)


def _input_widths(table: LatencyTable, layer) -> list:
    return table.widths[layer.input_group] if layer.input_group else [layer.in_channels]


def time_conv(layer, w_out: int, w_in: int, timer: Timer, dtype: torch.dtype) -> float:
    """Milliseconds of the layer's conv alone at widths (w_out, w_in) and its real input size."""
    conv = nn.Conv2d(w_in, w_out, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, bias=layer.bias).to(timer.device, dtype)
    n, _, h, w = layer.input_shape
    return timer(conv, torch.randn((n, w_in, h, w), device=timer.device, dtype=dtype))


def profile_layers(table: LatencyTable, timer: Timer, dtype: torch.dtype,
                   save: Optional[Callable] = None) -> None:
    """Time the conv of every layer not yet in `table.tables` at every width pair; layers with
    the same conv and input size share timings."""
    done = {}
    for layer in table.structure.layers:
        if layer.name in table.tables:
            rows = table.tables[layer.name]
            for w_out, row in zip(table.widths[layer.group], rows):
                for w_in, ms in zip(_input_widths(table, layer), np.atleast_1d(row)):
                    done[_conv_key(layer, w_out, w_in)] = float(ms)
    todo = [layer for layer in table.structure.layers if layer.name not in table.tables]
    total = sum(len(table.widths[layer.group]) * len(_input_widths(table, layer))
                for layer in todo)
    with tqdm(total=total, desc='conv tables', unit='conv') as bar:
        for layer in todo:
            rows = []
            for w_out in table.widths[layer.group]:
                row = []
                for w_in in _input_widths(table, layer):
                    key = _conv_key(layer, w_out, w_in)
                    if key not in done:
                        done[key] = time_conv(layer, w_out, w_in, timer, dtype)
                    row.append(done[key])
                    bar.update()
                rows.append(row if layer.input_group else row[0])
            table.tables[layer.name] = rows
            if save:
                save()


class _Heads(nn.Module):
    """An attention with `heads` heads of width `unit`, as the decoder's SDPAttention computes
    it: q/k/v projections, SDPA, out_proj."""

    def __init__(self, embed: int, heads: int, unit: int, out: int):
        super().__init__()
        self.heads, self.unit = heads, unit
        self.q, self.k, self.v = (nn.Linear(embed, heads * unit) for _ in range(3))
        self.out = nn.Linear(heads * unit, out)

    def _split(self, x):
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.unit).transpose(1, 2)

    def forward(self, q, k):
        out = F.scaled_dot_product_attention(self._split(self.q(q)), self._split(self.k(k)),
                                             self._split(self.v(k)))
        b, h, n, d = out.shape
        return self.out(out.transpose(1, 2).reshape(b, n, h * d))


class _TokenWork(nn.Module):
    """What a token setting costs outside the decoder layers: the query embedding over the
    learnable queries and the memory, the shared class and box branches over every layer's
    queries."""

    def __init__(self, embed_in: int, embed: int, classes: int):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(embed_in, embed), nn.ReLU(), nn.Linear(embed, embed))
        block = [nn.Linear(embed, embed), nn.LayerNorm(embed), nn.ReLU()]
        self.cls = nn.Sequential(*block, *block, nn.Linear(embed, classes))
        self.reg = nn.Sequential(nn.Linear(embed, embed), nn.ReLU(), nn.Linear(embed, embed),
                                 nn.ReLU(), nn.Linear(embed, 10))

    def forward(self, embed_in, queries):
        return self.embed(embed_in), self.cls(queries), self.reg(queries)


def time_part(part, width: int, timer: Timer, dtype: torch.dtype) -> float:
    """Milliseconds of a head part at `width` units (a neck conv: input channels) and its real
    input shapes."""
    device = timer.device
    if part.kind == MLP:
        shape = part.shapes[0]
        module = nn.Sequential(nn.Linear(shape[-1], width), nn.ReLU(),
                               nn.Linear(width, part.out_features))
        inputs = (torch.randn(shape, device=device, dtype=dtype),)
    elif part.kind == ATTENTION:
        module = _Heads(part.shapes[0][-1], width, part.unit, part.out_features)
        inputs = tuple(torch.randn(s, device=device, dtype=dtype) for s in part.shapes[:2])
    elif part.kind == TOKENS:
        part = at_setting(part, token_setting(part, width))
        module = _TokenWork(part.shapes[0][-1], part.shapes[1][-1], part.out_features)
        inputs = tuple(torch.randn(s, device=device, dtype=dtype) for s in part.shapes[:2])
    elif part.kind == NECK_CONV:
        n, _, h, w = part.shapes[0]
        module = nn.Conv2d(width, part.out_features, 1, bias=part.bias)
        inputs = (torch.randn((n, width, h, w), device=device, dtype=dtype),)
    else:
        raise ValueError(f'part {part.name!r}: unknown kind {part.kind!r}')
    return timer(module.to(device, dtype), *inputs)


def profile_parts(table: LatencyTable, timer: Timer, dtype: torch.dtype,
                  save: Optional[Callable] = None) -> None:
    """Time every head part and neck conv not yet in `table.tables` at each width of its group
    (every head count of an attention), and a decoder part at each token setting too (rows:
    its widths, columns: the settings), in the same table as the convs."""
    todo = [p for p in table.structure.parts if p.name not in table.tables]
    for part in tqdm(todo, desc='head parts', unit='part'):
        if part.input_group is None:
            table.tables[part.name] = [time_part(part, w, timer, dtype)
                                       for w in table.widths[part.group]]
        else:
            settings = token_part(table.structure, part.input_group).settings
            table.tables[part.name] = [[time_part(at_setting(part, s), w, timer, dtype)
                                        for s in settings] for w in table.widths[part.group]]
        if save:
            save()


def sample_choices(structure: Structure, widths: dict, n: int, seed: int,
                   removal: Optional[float] = None) -> list:
    """`n` random structures: each draws a keep ratio r in [0.25, 1], each group a width from
    its grid near r of its channels; each block is removed with probability `removal` (drawn
    in [0, 0.5] per structure when None, so block count and width vary independently)."""
    rng = np.random.default_rng(seed)
    choices = []
    for _ in range(n):
        ratio = rng.uniform(0.25, 1.0)
        p = rng.uniform(0.0, 0.5) if removal is None else removal
        chosen = {}
        for group, grid in widths.items():
            frac = float(np.clip(ratio + rng.normal(0.0, 0.15), 0.0, 1.0))
            chosen[group] = grid[max(0, math.ceil(frac * len(grid)) - 1)]
        removed = [b for b in structure.block_names if rng.random() < p]
        choices.append(StructureChoice(chosen, removed))
    return choices


def measure_samples(table: LatencyTable, measured: MeasuredLatency, n: int, seed: int = 0,
                    save: Optional[Callable] = None) -> None:
    """Time the dense backbone and `n` sampled structures end to end (those not yet timed)."""
    choices = [StructureChoice()] + sample_choices(table.structure, table.widths, n, seed)
    todo = choices[len(table.samples):]
    for choice in tqdm(todo, desc='end-to-end', unit='net'):
        ms = measured.predict(choice)
        table.samples.append({'widths': choice.all_widths(table.structure),
                              'removed_blocks': sorted(choice.removed_blocks), 'ms': ms})
        if len(table.samples) == 1:
            table.dense_ms = ms
        if save:
            save()


def fit_table(table: LatencyTable) -> dict:
    """Fit the overheads of both LUT models on the table's end-to-end samples; returns the
    in-sample mean absolute percentage error of each."""
    errors = {}
    for cls in (BilinearLutLatency, LinearLutLatency):
        table.fits[cls.fit_key] = fit_overheads(cls(table, fitted=False), table.samples)
        model = cls(table)
        coef = np.array([model.coef[t] for t in TERMS])
        # The samples time the backbone alone: compare with the model's backbone terms (a
        # whole-detector table's head parts are timed part by part, not fitted).
        errors[cls.fit_key] = 100 * float(np.mean([
            abs(float(model.terms(StructureChoice(s['widths'], s['removed_blocks'])) @ coef)
                - s['ms']) / s['ms'] for s in table.samples]))
    return errors
