"""Latency tables whose conv costs follow a formula (no timing): for tests whose outcome must not
depend on how fast this machine is."""
import numpy as np

from mmdp.latency import LatencyTable, make_meta
from mmdp.structure import derive_structure


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
