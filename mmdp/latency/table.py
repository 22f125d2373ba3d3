"""Latency table files: per-layer conv timings over (output width, input width) on a width grid,
end-to-end timings of sampled structures and the overhead terms fitted on them, with the metadata
of where and how they were measured."""
import datetime
import json
import warnings
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch

from mmdp.fileio import atomic_write_json
from mmdp.structure import Structure
from mmdp.structure.head import ATTENTION, TOKENS

from mmdp.runtime.runtimes import RUNTIME_OF_MODE, TABLE_RUNTIMES

from .timer import cudnn_version, device_name

TABLE_FORMAT = 'mmdp-latency-table'
TABLE_VERSION = 1
# Metadata that must match the setting a table is used in; a mismatch is an error.
CHECKED_FIELDS = ('device', 'input_shape', 'runtime', 'dtype')


class TableMismatchError(ValueError):
    """A latency table used for another device, input shape, runtime or dtype;
    `reason` is the mismatch alone, without the advice."""

    def __init__(self, message: str, reason: Optional[str] = None):
        super().__init__(message)
        self.reason = reason or message


def width_grid(full: int, step: int) -> list:
    """Widths profiled for a group of `full` channels: every multiple of `step`, then `full`."""
    if step < 1:
        raise ValueError(f'channel step must be >= 1, found {step}')
    return list(range(step, full, step)) + [full]


def profiled_widths(structure: Structure, step: int) -> dict:
    """Widths a table holds per group: every head count of an attention (heads are few and each
    one counts), every allowed setting of a token group (named by its learnable queries), the
    `step` grid of `width_grid` for channels and hidden units."""
    heads = {p.group for p in structure.parts if p.kind == ATTENTION}
    tokens = {p.group: [s[0] for s in p.settings] for p in structure.parts if p.kind == TOKENS}
    return {g: tokens[g] if g in tokens else list(range(1, full + 1)) if g in heads
            else width_grid(full, step) for g, full in structure.groups.items()}


def make_meta(device, dtype: str, input_shape, step: int, runtime: str, repeats: int,
              warmup: int, config: Optional[str] = None) -> dict:
    if runtime not in TABLE_RUNTIMES:
        raise ValueError(f'a latency table is profiled in one of {TABLE_RUNTIMES}, found '
                         f'runtime {runtime!r}')
    return {
        'device': device_name(device), 'torch': torch.__version__,
        'cudnn': cudnn_version(device), 'dtype': dtype, 'batch': int(input_shape[0]),
        'input_shape': [int(s) for s in input_shape], 'step': int(step),
        'runtime': runtime,
        'repeats': int(repeats), 'warmup': int(warmup), 'config': config,
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
    }


def _interp_matrix(grid: list, widths, what: str) -> np.ndarray:
    """(len(widths), len(grid)) weights of linear interpolation between profiled widths."""
    widths = np.asarray(widths, dtype=float)
    low, high = widths.min(), widths.max()
    if low < grid[0] or high > grid[-1]:
        bad = low if low < grid[0] else high
        raise ValueError(f'{what}: width {bad:g} lies outside the profiled widths '
                         f'{grid[0]}..{grid[-1]}; profile the table with a smaller --step')
    eye = np.eye(len(grid))
    return np.stack([np.interp(widths, grid, e) for e in eye], axis=1)


@dataclass
class LatencyTable:
    meta: dict
    structure: Structure
    widths: dict  # group -> profiled widths
    tables: dict = field(default_factory=dict)  # layer -> conv ms, [out][in] or [out] (stem)
    dense_ms: Optional[float] = None  # end to end, the unpruned backbone
    samples: list = field(default_factory=list)  # {'widths', 'removed_blocks', 'ms'}
    fits: dict = field(default_factory=dict)  # latency model -> fitted overhead coefficients
    path: Optional[str] = field(default=None, compare=False)

    @classmethod
    def new(cls, structure: Structure, meta: dict) -> 'LatencyTable':
        return cls(meta, structure, profiled_widths(structure, meta['step']))

    def backbone_only(self) -> 'LatencyTable':
        """This whole-detector table without its head and neck parts and decoder layers: the
        table a backbone-only run prices with, from the same conv timings. The end-to-end
        samples, their fits and the dense time include the parts, so they are dropped."""
        layer_groups = {layer.group for layer in self.structure.layers}
        dropped = {p.group for p in self.structure.parts} - layer_groups
        structure = replace(
            self.structure, parts=[],
            groups={g: n for g, n in self.structure.groups.items() if g not in dropped},
            blocks=[b for b in self.structure.blocks if b.layers])
        names = {layer.name for layer in structure.layers}
        return LatencyTable(dict(self.meta), structure,
                            {g: w for g, w in self.widths.items() if g not in dropped},
                            {k: v for k, v in self.tables.items() if k in names})

    @property
    def complete(self) -> bool:
        return all(layer.name in self.tables for layer in self.structure.layers)

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict:
        return {'format': TABLE_FORMAT, 'version': TABLE_VERSION, 'meta': self.meta,
                'structure': self.structure.to_dict(), 'widths': self.widths,
                'tables': self.tables, 'dense_ms': self.dense_ms, 'samples': self.samples,
                'fits': self.fits}

    def save(self, path) -> None:
        atomic_write_json(path, self.to_dict())
        self.path = str(path)

    @classmethod
    def load(cls, path, **expected) -> 'LatencyTable':
        """Load a table; every field of CHECKED_FIELDS given in `expected` (e.g.
        `device=device_name('cuda')`, `input_shape=(6, 3, 256, 704)`, `runtime='torch'`) must
        match the table's, else `TableMismatchError` names it."""
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f'latency table {path}: no such file') from None
        except json.JSONDecodeError as e:
            raise ValueError(f'latency table {path}: not valid JSON ({e})') from None
        if data.get('format') != TABLE_FORMAT or data.get('version') != TABLE_VERSION:
            raise ValueError(f'{path}: not a latency table of format {TABLE_FORMAT!r} version '
                             f"{TABLE_VERSION} (found {data.get('format')!r} "
                             f"{data.get('version')!r})")
        if 'mode' in data['meta']:  # tables written before runtimes had one name
            data['meta']['runtime'] = RUNTIME_OF_MODE[data['meta'].pop('mode')]
        table = cls(data['meta'], Structure.from_dict(data['structure']), data['widths'],
                    data['tables'], data['dense_ms'], data['samples'], data['fits'], str(path))
        table.check(**expected)
        return table

    def check(self, **expected) -> None:
        where = f'latency table {self.path}' if self.path else 'latency table'
        for name, current in expected.items():
            if name not in CHECKED_FIELDS:
                raise ValueError(f'cannot check latency table field {name!r}; checked fields '
                                 f'are {CHECKED_FIELDS}')
            if current is None:
                continue
            ours = self.meta[name]
            if name == 'input_shape':
                current = [int(s) for s in current]
            if ours != current:
                reason = f'{where}: {name} is {ours!r} in the table but {current!r} here'
                raise TableMismatchError(f'{reason}; profile a table for this setting '
                                         '(tools/profile_latency.py)', reason)
        if self.meta['torch'] != torch.__version__:
            warnings.warn(f"{where}: profiled with torch {self.meta['torch']}, running "
                          f'{torch.__version__}; timings may differ')

    def check_structure(self, structure: Structure) -> None:
        """Raise ValueError unless `structure` has this table's layers, channels and shapes."""
        ours = {layer.name: layer for layer in self.structure.layers}
        theirs = {layer.name: layer for layer in structure.layers}
        parts = ({p.name for p in self.structure.parts}, {p.name for p in structure.parts})
        for name in sorted(parts[0] ^ parts[1]):
            side = 'table' if name in parts[0] else 'model'
            raise ValueError(f'part {name!r} (head or neck) is only in the {side}: profile the '
                             "table with the config the run uses (a whole-detector config's "
                             '`prunable_head` times the head too)')
        for name in ours.keys() ^ theirs.keys():
            side = 'table' if name in ours else 'model'
            raise ValueError(f'layer {name!r} is only in the {side}: the latency table was '
                             'profiled for another model')
        for name, layer in ours.items():
            if layer != theirs[name]:
                diff = [k for k, v in vars(layer).items() if vars(theirs[name])[k] != v]
                raise ValueError(f'layer {name!r}: {diff[0]} is {vars(layer)[diff[0]]!r} in the '
                                 f'latency table but {vars(theirs[name])[diff[0]]!r} in the '
                                 'model')

    # ---------------------------------------------------------------- lookup
    def conv_ms(self, layer, out_widths, in_widths=None) -> np.ndarray:
        """The layer's conv latency, linearly interpolated between profiled widths:
        (len(out_widths), len(in_widths)), or (len(out_widths),) for a layer reading the image.
        """
        if layer.name not in self.tables:
            raise ValueError(f'latency table has no timings for layer {layer.name!r} '
                             '(an interrupted profile: run tools/profile_latency.py again)')
        values = np.asarray(self.tables[layer.name], dtype=float)
        rows = _interp_matrix(self.widths[layer.group], out_widths, f'{layer.name} output')
        if layer.input_group is None:
            return rows @ values
        cols = _interp_matrix(self.widths[layer.input_group], in_widths, f'{layer.name} input')
        return rows @ values @ cols.T
