"""Methods side by side (tools/compare_methods.py): every run's final structure valued against
one reference saliency window and priced by one latency table, next to its paired speed-up,
solve time and accuracy."""
import json
import os.path as osp
from typing import Optional

import numpy as np

from mmdp.fileio import atomic_write_json, atomic_write_text
from mmdp.importance.scores import slot_value
from mmdp.latency import BilinearLutLatency
from mmdp.structure import Structure, StructureChoice
from mmdp.structure.head import TOKENS

from .collect import RunRecord
from .markdown import _fmt, speedup_cell


# tools/benchmark.py's breakdown entries of each part the latency model predicts.
MEASURED_PARTS = {'backbone': 'img_backbone', 'neck': 'img_neck', 'head': 'pts_bbox_head'}


def load_reference(path: str) -> tuple:
    """(Structure, {unit owner: per-unit saliency}) from a pruning event's `*_saliency.json`."""
    with open(path) as f:
        data = json.load(f)
    return Structure.from_dict(data['structure']), {
        name: np.asarray(v, dtype=np.float64) for name, v in data['saliency'].items()}


def kept_importance(structure: Structure, saliency: dict, choice: StructureChoice) -> float:
    """The share of the reference saliency that `choice` keeps: each prunable conv and head part
    keeps its group's kept units (a token setting: its kept queries and memory slots, valued as
    the solver values them), nothing inside a removed block or decoder layer. Groups the
    choice does not name (a backbone-only run against a whole-detector reference) stay whole."""
    total = kept = 0.0
    for item in list(structure.layers) + structure.valued_parts:
        values = saliency[item.name]
        total += values.sum()
        if item.block in choice.removed_blocks:
            continue
        if getattr(item, 'kind', None) == TOKENS:  # learnable queries, then memory slots
            queries = structure.groups[item.group]
            kept += values[:queries][choice.kept(structure, item.group)].sum() + slot_value(
                item, np.concatenate([[0.0], np.cumsum(values[queries:])]),
                choice.width(structure, item.group))
        else:
            kept += values[choice.kept(structure, item.group)].sum()
    return kept / total


def _solve_seconds(record: RunRecord):
    if record.events:  # HALP's are summed over its steps
        return sum(e['seconds'] for e in record.events)
    return None


def method_row(record: RunRecord, choice: StructureChoice, reference: tuple,
               table: str, solve_seconds=None) -> dict:
    """One row of the comparison. Latency is predicted by the bilinear table model (no fitted
    terms) over the whole reference structure, whatever model the method decided with."""
    structure, saliency = reference
    model = BilinearLutLatency(table, fitted=False)
    known = set(model.structure.groups)
    # A structure valued against the table's own groups and blocks (those of the reference).
    choice = StructureChoice({g: w for g, w in choice.widths.items() if g in known},
                             choice.removed_blocks, {g: c for g, c in choice.channels.items()
                                                     if g in known})
    seconds = _solve_seconds(record) if solve_seconds is None else solve_seconds
    breakdown = (record.fps or {}).get('breakdown_ms', {})
    return dict(
        predicted_parts_ms=model.predict_parts(choice),
        measured_parts_ms={part: breakdown.get(key) for part, key in MEASURED_PARTS.items()},
        method=record.name, mAP=record.metrics.get('mAP'), NDS=record.metrics.get('NDS'),
        kept_importance=kept_importance(structure, saliency, choice),
        predicted_ms=model.predict(choice),
        dense_predicted_ms=model.predict(StructureChoice()),
        removed_blocks=sorted(choice.removed_blocks),
        solve_seconds=seconds, speedup=record.speedup)


def write_comparison(rows: list, out_dir: str, budget: float, table: str,
                     failed: Optional[dict] = None) -> str:
    """`out_dir/comparison.md` and `comparison.json`; returns the Markdown path. `failed`:
    {method: why} for the methods that produced no model."""
    failed = failed or {}
    lines = [
        f'# Methods at prune ratio {budget:g}', '',
        f'Kept importance: the share of one reference Taylor saliency window that the final '
        f'structure keeps. Predicted latency: `lut_bilinear` over `{osp.basename(table)}`, the '
        f'whole detector at the full input as profiled (backbone-only methods keep the head '
        f'whole; a smaller input, JointPruning\'s, is not in it). Speed-up: paired, against the '
        f'dense model at its input (tools/speedup.py).', '',
        '| method | input | kept importance | predicted ms (share of dense) | blocks removed | '
        'speed-up (paired) | solve s | mAP | NDS |', '|' + ' --- |' * 9]
    for r in rows:
        share = r['predicted_ms'] / r['dense_predicted_ms']
        size = r['speedup']['img_size'] if r['speedup'] else None
        lines.append(
            f"| {r['method']} | {'x'.join(map(str, size)) if size else '-'} | "
            f"{r['kept_importance']:.3f} | {r['predicted_ms']:.2f} "
            f"({share:.2f}) | {len(r['removed_blocks'])} | {speedup_cell(r['speedup'])} | "
            f"{_fmt(r['solve_seconds'], '.2f')} | {_fmt(r['mAP'])} | {_fmt(r['NDS'])} |")
    lines += [f'| {name} | failed: {why} |' + ' |' * 7 for name, why in failed.items()]
    lines += ['', '## Latency per part', '',
              'Predicted: the table model above; measured: tools/benchmark.py\'s breakdown of the '
              'exported model (each model timed on its own, so shared-machine load moves these; '
              'the paired speed-up above does not).', '',
              '| method | predicted backbone / neck / head ms | measured backbone / neck / head '
              'ms |', '| --- | --- | --- |']
    for r in rows:
        pred, meas = r['predicted_parts_ms'], r['measured_parts_ms']
        lines.append(f"| {r['method']} | {' / '.join(_fmt(pred[k], '.1f') for k in pred)} | "
                     f"{' / '.join(_fmt(meas[k], '.1f') for k in pred)} |")
    atomic_write_json(osp.join(out_dir, 'comparison.json'),
                      dict(budget=budget, table=osp.abspath(table), rows=rows, failed=failed))
    path = osp.join(out_dir, 'comparison.md')
    atomic_write_text(path, '\n'.join(lines) + '\n')
    return path
