"""Latency of a sub-network at an image size, from the registered table models.

The search asks for hundreds of predictions per step, so only table models (`lut_bilinear`,
`lut_linear`, `flops`) are accepted, not `measured`. A table is profiled at one input shape:
given one table per ladder size (`tables`, keyed 'HxW'), each size uses its own; given one
`table`, other sizes scale its prediction by the pixel ratio (exact for MACs, an approximation
for measured tables, which the log says). `flops` without any table counts MACs of the derived
structure in units of the dense backbone (1.0 = dense).

A whole-detector structure (head parts, `prunable_head`) is priced by whole-detector tables
(backbone convs, neck convs and head parts, `tools/profile_latency.py` on the config with
`--input-shape N C H W` per size), one per ladder size: the latency of a setting at a size is
that size's table's prediction, backbone + neck + head. A single whole table is refused for a
ladder of several sizes, naming the sizes without a table: the head's costs do not follow the
pixel count (the position encoder and cross-attention follow the image tokens, the FFN and
self-attention the queries only), so no ratio scales the sum honestly. `flops` (MACs of the
backbone's convs) is refused for a whole-detector structure too.
"""
import datetime
import os.path as osp
from typing import Optional

from mmdp.latency import LATENCY_MODELS, LatencyTable
from mmdp.structure import Structure, StructureChoice

TABLE_MODELS = ('lut_bilinear', 'lut_linear', 'flops')


def parse_size(key) -> tuple:
    """'256x704' or (256, 704) -> (256, 704)."""
    if isinstance(key, str):
        parts = key.lower().split('x')
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"latency table key {key!r}: expected 'HxW', e.g. '256x704'")
        return int(parts[0]), int(parts[1])
    return tuple(int(v) for v in key)


def _macs_table(structure: Structure) -> LatencyTable:
    """An in-memory table holding only the structure, for MACs relative to the dense model."""
    meta = {'device': 'none (MACs)', 'input_shape': list(structure.input_shape),
            'dtype': 'fp32', 'runtime': 'torch', 'step': 1, 'torch': None,
            'date': datetime.datetime.now().isoformat(timespec='seconds')}
    return LatencyTable(meta, structure, widths={}, dense_ms=1.0)


def _model_class(kind: str):
    # `get`, not `build`: the runner's default scope (mmdet3d) is not in this registry's tree.
    cls = LATENCY_MODELS.get(kind)
    if cls is None:
        raise ValueError(f'latency type {kind!r} is not registered in LATENCY_MODELS')
    return cls


class SizedLatency:
    """`latency(choice, size)`: the prediction of the model for `size`, or of the full-size
    model times (H * W) / (H0 * W0). `unit` names what the numbers are."""

    def __init__(self, models: dict, full_size, unit: str = 'ms'):
        self.full_size = tuple(full_size)
        if self.full_size not in models:
            raise ValueError(f'no latency model for the full image size {self.full_size}; '
                             f'models are given for {sorted(models)}')
        self.models, self.unit = dict(models), unit

    @property
    def scaled_sizes(self) -> bool:
        return len(self.models) == 1

    def __call__(self, choice: StructureChoice, size) -> float:
        size = tuple(size)
        if size in self.models:
            return float(self.models[size].predict(choice))
        if not self.scaled_sizes:
            raise ValueError(f'no latency table for image size {size}: tables are given for '
                             f'{sorted(self.models)}; give one per ladder size or a single one')
        ratio = size[0] * size[1] / (self.full_size[0] * self.full_size[1])
        return ratio * float(self.models[self.full_size].predict(choice))


def table_step(cfg: dict, full_size) -> Optional[int]:
    """The width step the full-size table of the hook's `latency` config was profiled at
    (None without a table)."""
    path = cfg.get('table')
    if cfg.get('tables'):
        path = {parse_size(k): v for k, v in cfg['tables'].items()}.get(tuple(full_size))
    return None if path is None else int(LatencyTable.load(path).meta['step'])


def build_sized_latency(cfg: dict, structure: Structure, full_size, ladder,
                        batch: Optional[int] = None) -> SizedLatency:
    """From the hook's `latency` config: `type` (one of TABLE_MODELS), then `table` (one file),
    `tables` ({'HxW': file} for every ladder size) or neither (`flops` only), plus the model's
    own arguments (e.g. `fitted`). Tables are checked against the structure's input shape."""
    cfg = dict(cfg)
    kind = cfg.pop('type', None)
    if kind not in TABLE_MODELS:
        raise ValueError(f'latency type {kind!r}: JointPruning needs a table model, one of '
                         f'{TABLE_MODELS} (the search queries it hundreds of times per step)')
    table, tables = cfg.pop('table', None), cfg.pop('tables', None)
    if table is not None and tables is not None:
        raise ValueError("give either latency.table or latency.tables, not both")
    full_size = tuple(full_size)
    batch = batch or structure.input_shape[0]
    whole = bool(structure.parts)
    if tables is not None:
        paths = {parse_size(k): v for k, v in tables.items()}
        missing = [s for s in ladder if tuple(s) not in paths]
        if missing:
            raise ValueError(f'latency.tables has no table for ladder sizes {missing}')
    elif whole and (table is None or len(ladder) > 1):
        missing = [tuple(s) for s in ladder if table is None or tuple(s) != full_size]
        raise ValueError(
            f'a whole-detector run (prunable_head) needs a whole-detector latency table per '
            f"ladder size in latency.tables ({{'HxW': file}}); none for {missing}: the head's "
            'costs follow the image tokens and the queries, not the pixel ratio, so one table '
            'is not scaled (profile each with tools/profile_latency.py CONFIG --input-shape '
            'N C H W)')
    elif table is not None:
        paths = {full_size: table}
    elif kind == 'flops':
        model = _model_class(kind)(_macs_table(structure))
        return SizedLatency({full_size: model}, full_size, unit='dense backbone MACs')
    else:
        raise ValueError(f"latency type {kind!r} needs latency.table (a file profiled by "
                         "tools/profile_latency.py) or latency.tables ({'HxW': file})")
    models = {}
    for size, path in paths.items():
        shape = (batch, structure.input_shape[1], *size)
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'latency table {path} (image size {size}) does not exist: profile it on the '
                f'target device with `python tools/profile_latency.py CONFIG --input-shape '
                f"{' '.join(map(str, shape))} --out {path}`")
        models[size] = _model_class(kind)(table=path, expect=dict(input_shape=shape), **cfg)
        if size != full_size:
            _check_same_model(models[size].table, structure, path)
    models[full_size].table.check_structure(structure)
    return SizedLatency(models, full_size)


def _check_same_model(table: LatencyTable, structure: Structure, path: str) -> None:
    """A table of another ladder size prices the same groups, layers and parts (their shapes
    differ with the size)."""
    ours, theirs = table.structure, structure
    for what, a, b in (('group', ours.groups, theirs.groups),
                       ('layer', {x.name for x in ours.layers}, {x.name for x in theirs.layers}),
                       ('part', {x.name for x in ours.parts}, {x.name for x in theirs.parts})):
        if a != b:
            name = sorted(set(a) ^ set(b) or [g for g in a if a[g] != b[g]])[0]
            raise ValueError(f'latency table {path}: {what} {name!r} is not the same in the '
                             "table and the model: profile every ladder size's table with the "
                             "run's config")
