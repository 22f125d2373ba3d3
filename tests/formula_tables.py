"""Latency tables whose conv costs follow a formula (no timing): for tests whose outcome must not
depend on how fast this machine is."""
import numpy as np

from mmdp.latency import LatencyTable, make_meta
from mmdp.structure import derive_structure
from mmdp.structure.head import NECK_CONV, TOKENS


def formula_table(model, shape, step: int, path: str, device=None) -> LatencyTable:
    """Cost of a conv: deterministic, growing with both widths and its output size."""
    structure = derive_structure(model, shape)
    meta = make_meta('cpu', 'fp32', shape, step, 'torch', 1, 0)
    table = LatencyTable.new(structure, dict(meta, device=device or meta['device']))
    for layer in structure.layers:
        _, _, h, w = layer.output_shape
        cost = np.outer(table.widths[layer.group], table.widths[layer.input_group]
                        if layer.input_group else [layer.in_channels])
        ms = 1e-6 * cost * h * w * layer.kernel_size[0] ** 2 + 0.01
        table.tables[layer.name] = ms.tolist() if layer.input_group else ms[:, 0].tolist()
    table.save(path)
    return table


def whole_formula_table(model, shape, step: int, scale: float, head_scale: float,
                        head: str = 'pts_bbox_head', per_query: bool = True) -> LatencyTable:
    """A whole-detector table with known entries: every conv `scale` ms at any width, a neck conv
    `scale / 100` ms per input channel, a head part `head_scale` ms per unit (times the setting's
    learnable queries for a decoder part, unless not `per_query`), the token part 0.5 ms per
    query."""
    st = derive_structure(model, shape, head=head)
    table = LatencyTable.new(st, make_meta('cpu', 'fp32', shape, step, 'torch', 1, 0))
    settings = next(part.settings for part in st.parts if part.kind == TOKENS)
    for layer in st.layers:
        rows = [scale] * len(table.widths[layer.group])
        table.tables[layer.name] = ([[v] * len(table.widths[layer.input_group]) for v in rows]
                                    if layer.input_group else rows)
    for part in st.parts:
        widths = table.widths[part.group]
        if part.kind == TOKENS:
            table.tables[part.name] = [0.5 * w for w in widths]
        elif part.kind == NECK_CONV:
            table.tables[part.name] = [scale / 100 * w for w in widths]
        elif part.input_group:
            table.tables[part.name] = [[head_scale * w * (q if per_query else 1)
                                        for q, _, _ in settings] for w in widths]
        else:
            table.tables[part.name] = [head_scale * w for w in widths]
    return table
