"""Latency models: predict the latency of a structure choice (widths per group, removed blocks).

Table models (`lut_bilinear`, `lut_linear`, `flops`) are sums of per-layer costs, so they export
exactly to the problem format (docs/problem-format.md). The LUT models add fitted overhead terms
for what a GPU spends outside convs; each is linear in the width and block choices and folds into
the layer tables: a per-kept-block cost split over the block's layers, a cost per output element
(BN, activation, residual add) in each layer's row, a constant in the first always-kept layer.
"""
from collections import Counter
from typing import Callable, Optional

import numpy as np
import torch
from scipy.optimize import nnls

from mmdp.structure import Structure, StructureChoice, derive_structure, prune_copy
from mmdp.structure.head import ATTENTION, NECK_CONV, TOKENS, Part

from .registry import LATENCY_MODELS
from .table import LatencyTable, profiled_widths
from .timer import DTYPES, Timer

# Order of the fitted terms of the LUT models.
TERMS = ('scale', 'per_block', 'per_element', 'constant')


def group_widths(structure: Structure, step: int) -> dict:
    """The widths a problem offers per group: the stem's full width only, every head count of an
    attention, multiples of `step` (then the full width) elsewhere."""
    grid = profiled_widths(structure, step)
    return {g: [full] if g in structure.fixed_groups else grid[g]
            for g, full in structure.groups.items()}


def group_kinds(structure: Structure) -> dict:
    """{group: {'kind', 'unit'}} of the problem format's version 2 (docs/problem-format.md)."""
    kinds = {g: {'kind': 'channels', 'unit': 1} for g in structure.groups}
    for part in structure.valued_parts:
        kinds[part.group] = {'kind': 'heads' if part.kind == ATTENTION else 'hidden',
                             'unit': part.unit}
        if part.kind == TOKENS:
            kinds[part.group] = {'kind': 'tokens', 'unit': 1, 'settings': [
                dict(zip(('num_query', 'num_propagated', 'memory_len'), map(int, s)))
                for s in part.settings]}
    return kinds


def _elements(layer, widths) -> np.ndarray:
    """Output elements of a layer at each output width (N * width * H * W)."""
    n, _, h, w = layer.output_shape
    return n * h * w * np.asarray(widths, dtype=float)


class TableLatencyModel:
    """A latency that is a sum over kept layers of `layer_costs(layer, w_out, w_in)` (ms), built
    from a latency table file (checked against `expect`, see `LatencyTable.load`) or a loaded
    `LatencyTable`."""

    def __init__(self, table, expect: Optional[dict] = None):
        self.table = (table if isinstance(table, LatencyTable)
                      else LatencyTable.load(table, **(expect or {})))
        self.structure = self.table.structure
        layers = self.structure.layers
        self.block_size = Counter(layer.block for layer in layers if layer.block)
        fixed = [layer.name for layer in layers if layer.block is None]
        if not fixed:
            raise ValueError('the structure has no always-kept layer to hold the constant cost')
        self.anchor = fixed[0]

    def layer_costs(self, layer, out_widths, in_widths) -> np.ndarray:
        """(len(out_widths), len(in_widths)) costs, or (len(out_widths),) without input group."""
        raise NotImplementedError

    def _layer_cost(self, layer, widths: dict) -> float:
        in_widths = [widths[layer.input_group]] if layer.input_group else None
        return float(np.ravel(self.layer_costs(layer, [widths[layer.group]], in_widths))[0])

    def part_costs(self, part, widths, in_widths=None) -> np.ndarray:
        """A head part's or neck conv's timing at each of its group's `widths`, from the table
        (each part is timed whole, its activations included, so no overhead term is added)."""
        return self.table.conv_ms(part, widths, in_widths)

    def predict(self, choice: StructureChoice) -> float:
        return sum(self.predict_parts(choice).values())

    def predict_parts(self, choice: StructureChoice) -> dict:
        """{'backbone', 'neck', 'head': ms}: the prediction split where a detector's timing
        breakdown splits it (neck and head are 0 for a backbone table)."""
        choice.check(self.structure)
        widths = choice.all_widths(self.structure)
        out = {'backbone': sum(self._layer_cost(layer, widths) for layer in self.structure.layers
                               if layer.block not in choice.removed_blocks),
               'neck': 0.0, 'head': 0.0}
        for part in self.structure.parts:
            if part.block not in choice.removed_blocks:
                out['neck' if part.kind == NECK_CONV else 'head'] += float(np.ravel(
                    self.part_costs(part, [widths[part.group]],
                                    [widths[part.input_group]] if part.input_group else None))[0])
        return out

    def to_problem(self, structure: Optional[Structure] = None,
                   importance: Optional[Callable] = None, budget_ratio: Optional[float] = None,
                   budget: Optional[float] = None, chunk: Optional[int] = None) -> dict:
        """The pruning problem (docs/problem-format.md) of this model's tables.

        `importance(layer_name, widths)` gives a layer's value per width (zeros when None);
        the budget is `budget` or `budget_ratio` times the dense latency; widths go in steps of
        `chunk` channels (default: the table's step), except that the stem's group
        (`Structure.fixed_groups`) keeps its full width. `structure`, when given, must be the one
        the tables were made for.
        """
        if structure is not None:
            self.table.check_structure(structure)
        if (budget is None) == (budget_ratio is None):
            raise ValueError('give exactly one of budget and budget_ratio')
        if budget_ratio is not None and not 0 < budget_ratio <= 1:
            raise ValueError(f'budget_ratio must lie in (0, 1], found {budget_ratio}')
        chunk = chunk or self.table.meta['step']
        st = self.structure
        widths = group_widths(st, chunk)
        layers = []
        for layer in list(st.layers) + list(st.parts):
            out = widths[layer.group]
            inputs = widths[layer.input_group] if layer.input_group else None
            value = [0.0] * len(out) if importance is None else [
                float(v) for v in importance(layer.name, out)]
            if len(value) != len(out):
                raise ValueError(f'importance of {layer.name!r}: {len(value)} values for '
                                 f'{len(out)} widths')
            costs = (self.part_costs(layer, out, inputs) if isinstance(layer, Part)
                     else self.layer_costs(layer, out, inputs))
            layers.append({'name': layer.name, 'group': layer.group,
                           'input_group': layer.input_group, 'block': layer.block,
                           'importance': value, 'latency': costs.tolist()})
        dense = self.predict(StructureChoice())
        kinds = group_kinds(st) if st.parts else {g: {} for g in widths}
        return {'version': 2 if st.parts else 1,
                'budget': float(budget if budget is not None else budget_ratio * dense),
                'groups': {g: {'widths': ws, **kinds[g]} for g, ws in widths.items()},
                'layers': layers,
                'blocks': st.block_names, 'dense_latency': dense,
                'meta': {'latency_model': type(self).__name__, 'unit': 'ms', 'chunk': chunk,
                         'table': self.table.meta}}


class _LutModel(TableLatencyModel):
    """Conv timings from the table, plus the fitted overhead terms (`fitted=False`: the plain
    sum of the table entries)."""
    fit_key = None

    def __init__(self, table, expect: Optional[dict] = None, fitted: bool = True):
        super().__init__(table, expect)
        if not fitted:
            self.coef = {'scale': 1.0, 'per_block': 0.0, 'per_element': 0.0, 'constant': 0.0}
        elif self.fit_key not in self.table.fits:
            raise ValueError(f'latency table {self.table.path} has no fitted overheads for '
                             f'{self.fit_key!r}: profile it with --samples > 0, or build the '
                             'model with fitted=False for the plain table sum')
        else:
            self.coef = dict(self.table.fits[self.fit_key])

    def conv_costs(self, layer, out_widths, in_widths) -> np.ndarray:
        raise NotImplementedError

    def layer_costs(self, layer, out_widths, in_widths) -> np.ndarray:
        c = self.coef
        extra = c['per_element'] * _elements(layer, out_widths)
        if layer.block:
            extra = extra + c['per_block'] / self.block_size[layer.block]
        if layer.name == self.anchor:
            extra = extra + c['constant']
        conv = c['scale'] * self.conv_costs(layer, out_widths, in_widths)
        return conv + (extra if conv.ndim == 1 else extra[:, None])

    def terms(self, choice: StructureChoice) -> np.ndarray:
        """The values the fitted coefficients multiply, in the order of TERMS."""
        widths = choice.all_widths(self.structure)
        kept = [layer for layer in self.structure.layers
                if layer.block not in choice.removed_blocks]
        conv = sum(float(np.ravel(self.conv_costs(
            layer, [widths[layer.group]],
            [widths[layer.input_group]] if layer.input_group else None))[0]) for layer in kept)
        blocks = len(set(self.block_size) - choice.removed_blocks)  # residual blocks
        elements = sum(float(_elements(layer, [widths[layer.group]])[0]) for layer in kept)
        return np.array([conv, blocks, elements, 1.0])


@LATENCY_MODELS.register_module(name='lut_bilinear')
class BilinearLutLatency(_LutModel):
    """MDP's model: each conv costs T[c_out][c_in] at both chosen widths."""
    fit_key = 'lut_bilinear'

    def conv_costs(self, layer, out_widths, in_widths) -> np.ndarray:
        return self.table.conv_ms(layer, out_widths, in_widths)


@LATENCY_MODELS.register_module(name='lut_linear')
class LinearLutLatency(_LutModel):
    """HALP's model: each conv costs T[c_out][c_in] with c_in frozen at the current width of
    its input group (`input_widths`, default the full widths), whatever is chosen there."""
    fit_key = 'lut_linear'

    def __init__(self, table, expect: Optional[dict] = None, fitted: bool = True,
                 input_widths: Optional[dict] = None):
        super().__init__(table, expect, fitted)
        self.input_widths = {**self.structure.groups, **(input_widths or {})}

    def conv_costs(self, layer, out_widths, in_widths) -> np.ndarray:
        if layer.input_group is None:
            return self.table.conv_ms(layer, out_widths)
        frozen = self.table.conv_ms(layer, out_widths, [self.input_widths[layer.input_group]])
        return np.repeat(frozen, len(in_widths), axis=1)


@LATENCY_MODELS.register_module(name='flops')
class FlopsLatency(TableLatencyModel):
    """Multiply-accumulates at the layers' real input shapes, scaled so that the dense backbone
    costs its measured `dense_ms` from the table."""

    def __init__(self, table, expect: Optional[dict] = None):
        super().__init__(table, expect)
        if self.table.dense_ms is None:
            raise ValueError(f'latency table {self.table.path} has no dense end-to-end timing '
                             'to scale MACs to milliseconds (an interrupted profile: run '
                             'tools/profile_latency.py again)')
        full = self.structure.groups
        dense_macs = sum(
            float(np.ravel(self.macs(layer, [full[layer.group]],
                                     [full[layer.input_group]] if layer.input_group else None)
                           )[0]) for layer in self.structure.layers)
        self.ms_per_mac = self.table.dense_ms / dense_macs

    @staticmethod
    def macs(layer, out_widths, in_widths) -> np.ndarray:
        n, _, h, w = layer.output_shape
        per_pair = n * h * w * layer.kernel_size[0] * layer.kernel_size[1]
        out = np.asarray(out_widths, dtype=float)
        if in_widths is None:
            return per_pair * layer.in_channels * out
        return per_pair * np.outer(out, np.asarray(in_widths, dtype=float))

    def layer_costs(self, layer, out_widths, in_widths) -> np.ndarray:
        return self.ms_per_mac * self.macs(layer, out_widths, in_widths)


@LATENCY_MODELS.register_module(name='measured')
class MeasuredLatency:
    """Builds the physically smaller backbone and times it end to end."""

    def __init__(self, backbone: torch.nn.Module, input_shape=None,
                 structure: Optional[Structure] = None, device='cpu', dtype: str = 'fp32',
                 mode: str = 'eager', repeats: int = 50, warmup: int = 5):
        if dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {sorted(DTYPES)}, found {dtype!r}')
        if structure is None:
            if input_shape is None:
                raise ValueError('give the input_shape or a derived structure')
            structure = derive_structure(backbone, input_shape)
        self.backbone, self.structure = backbone, structure
        self.input_shape = tuple(input_shape or structure.input_shape)
        self.device, self.dtype = torch.device(device), DTYPES[dtype]
        self.timer = Timer(device, mode, repeats, warmup)

    def build(self, choice: StructureChoice) -> torch.nn.Module:
        net = prune_copy(self.backbone, self.structure, choice, backbone_only=True)
        net.to(self.device, self.dtype)
        net.eval()  # mmdet's ResNet.train returns None: no chaining
        return net

    def predict(self, choice: StructureChoice) -> float:
        net = self.build(choice)
        x = torch.randn(self.input_shape, device=self.device, dtype=self.dtype)
        return self.timer(net, x)


class MeasuredDetectorLatency:
    """Builds the physically smaller detector (backbone, neck and head: a whole-detector
    structure) and times one frame of it end to end, host code included (frame geometry, memory
    queue, decoding), in PyTorch eager: what a whole-detector latency model predicts."""

    def __init__(self, model: torch.nn.Module, structure: Structure, device='cpu',
                 repeats: int = 50, warmup: int = 5):
        if not structure.parts:
            raise ValueError('MeasuredDetectorLatency times a whole-detector structure (one '
                             "with the head's parts); a backbone structure: MeasuredLatency")
        self.model, self.structure = model, structure
        self.device = torch.device(device)
        self.img_size = tuple(structure.input_shape[-2:])
        self.timer = Timer(device, 'eager', repeats, warmup)

    def predict(self, choice: StructureChoice) -> float:
        from mmdp.runtime.detector import preprocessed_frames
        net = prune_copy(self.model, self.structure, choice).to(self.device).eval()
        frame, = preprocessed_frames(net, self.img_size, 1)
        frame['inputs']['imgs'] = frame['inputs']['imgs'].to(self.device)
        # Every call starts its memory afresh (same time stamp): each costs the same.
        return self.timer(lambda data: net(**data, mode='predict'), frame)


def fit_overheads(model: _LutModel, samples: list) -> dict:
    """Non-negative overhead coefficients (TERMS) fitted to end-to-end timings, minimising the
    squared relative error."""
    if len(samples) < len(TERMS):
        raise ValueError(f'{len(samples)} timed structures cannot fit {len(TERMS)} terms')
    x = np.stack([model.terms(StructureChoice(s['widths'], s['removed_blocks']))
                  for s in samples])
    y = np.array([s['ms'] for s in samples])
    a = x / y[:, None]
    norm = np.abs(a).max(axis=0)
    norm[norm == 0] = 1.0
    coef, _ = nnls(a / norm, np.ones(len(y)))
    return dict(zip(TERMS, (coef / norm).tolist()))
