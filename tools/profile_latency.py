"""Profile the latency table of a model's backbone (and, with `--head` or a config's
`prunable_head`, of the head's prunable parts and the neck's lateral convs).

    python tools/profile_latency.py CONFIG --out TABLE [--dtype fp32|fp16] [--step 32]
        [--runtime torch|cudagraph|compile|ort|trt] [--input-shape N C H W] [--repeats R]
        [--samples S]

Times every prunable conv over its (output width, input width) grid at its real input size, then
times the dense backbone and S random prunings end to end and fits the overhead terms of the LUT
models. The table is saved after every layer and every timed structure; running the same command
again resumes an interrupted run. Under `--runtime ort|trt` every conv, part and pruned backbone
is exported to ONNX and timed in ONNX Runtime / TensorRT; the table records the runtime's version
(and ORT's providers and threads). Under `--runtime compile` (backbone tables) the convs share
one dynamic torch.compile graph and each pruned backbone is compiled whole.
"""
import argparse
import os
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

import torch  # noqa: E402

from mmdp.config_utils import load_config  # noqa: E402
from mmdp.cli import UsageError, check_device, check_writable, counts, entry  # noqa: E402
from mmdp.latency import (DTYPES, TERMS, LatencyTable, MeasuredLatency, Timer,  # noqa: E402
                          build_from_config, device_name, fit_table, make_meta,
                          measure_samples, profile_layers, profile_parts)
from mmdp.runtime.runtimes import (TABLE_RUNTIMES, add_runtime_argument,  # noqa: E402
                                   check_runtime, resolve_runtime, runtime_meta)
from mmdp.structure import derive_structure  # noqa: E402

# Settings a resumed run must share with the partial table it continues.
RESUME_FIELDS = ('step', 'repeats', 'warmup', 'batch')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='mmengine config of a detector or a bare backbone')
    parser.add_argument('--out', required=True, help='latency table JSON to write (or resume)')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp32')
    parser.add_argument('--step', type=counts(1), default=32,
                        help='channel step of the width grid')
    add_runtime_argument(parser, TABLE_RUNTIMES)
    parser.add_argument('--input-shape', type=int, nargs=4, metavar=('N', 'C', 'H', 'W'),
                        help="backbone input; default: the config's latency_input_shape")
    parser.add_argument('--repeats', type=counts(1), default=100,
                        help='timed runs per measurement')
    parser.add_argument('--warmup', type=counts(0), default=10, help='untimed runs before timing')
    parser.add_argument('--samples', type=counts(0), default=40,
                        help='random prunings timed end to end to fit the overheads')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=counts(1),
                        help='CPU threads of torch and ONNX Runtime (torch.set_num_threads)')
    parser.add_argument('--head', help="the detector's head to time with the backbone (its "
                        "prunable parts and the neck's convs), e.g. pts_bbox_head; default: "
                        "the config's `prunable_head`, else the backbone alone")
    args = resolve_runtime(parser.parse_args(argv))
    if args.samples < len(TERMS) - 1:
        parser.error(f'--samples must be at least {len(TERMS) - 1} to fit {len(TERMS)} '
                     f'overhead terms {TERMS} (with the dense timing)')
    return args


def open_table(path: str, structure, meta: dict, runtime_fields=()) -> LatencyTable:
    """A new table, or the partial one at `path` when it was profiled in the same setting (also
    `runtime_fields` of the metadata, such as the onnxruntime version)."""
    if not os.path.exists(path):
        return LatencyTable.new(structure, meta)
    table = LatencyTable.load(path, **{k: meta[k] for k in ('device', 'input_shape', 'runtime',
                                                            'dtype')})
    for name in RESUME_FIELDS + tuple(runtime_fields):
        if table.meta.get(name) != meta[name]:
            raise UsageError(f'{path}: {name} is {table.meta.get(name)!r} in the table but '
                             f'{meta[name]!r} here; use another --out or the same settings')
    table.check_structure(structure)
    print(f'resuming {path}: {len(table.tables)}/{len(structure.layers)} layers, '
          f'{len(table.samples)} end-to-end timings done')
    return table


def main(argv=None) -> LatencyTable:
    args = parse_args(argv)
    check_device(args.device)
    check_runtime(args.runtime, args.device)
    check_writable(osp.dirname(osp.abspath(args.out)), '--out folder')
    if args.threads:
        torch.set_num_threads(args.threads)
    timer = Timer(args.device, args.mode, args.repeats, args.warmup)  # refuses a bad mode early
    model, input_shape = build_from_config(args.config, args.input_shape)
    head = args.head or load_config(args.config).get('prunable_head')
    if head and args.runtime == 'compile':
        raise UsageError('--runtime compile times a backbone table (the compile runtime '
                         "compiles the backbone and neck, the head's Python stays eager); "
                         f'{args.config} has the head {head!r}: use --runtime torch')
    structure = derive_structure(model, input_shape, head=head)
    backbone = model.get_submodule(structure.backbone) if structure.backbone else model
    meta = make_meta(args.device, args.dtype, input_shape, args.step, args.runtime, args.repeats,
                     args.warmup, os.path.abspath(args.config))
    extra = runtime_meta(args.runtime, args.device)
    meta.update(extra)
    table = open_table(args.out, structure, meta, extra)
    print(f"{len(structure.layers)} prunable convs, {len(structure.groups)} channel groups, "
          f"{len(structure.blocks)} removable blocks on {device_name(args.device)}, runtime "
          f"{args.runtime}" + ''.join(f', {k} {v}' for k, v in extra.items()))

    def save():
        table.save(args.out)

    profile_layers(table, timer, DTYPES[args.dtype], save)
    profile_parts(table, timer, DTYPES[args.dtype], save)
    measured = MeasuredLatency(backbone, input_shape, structure, args.device, args.dtype,
                               args.mode, args.repeats, args.warmup)
    measure_samples(table, measured, args.samples, args.seed, save)
    errors = fit_table(table)
    save()
    print(f'dense backbone: {table.dense_ms:.3f} ms end to end')
    for name, fit in table.fits.items():
        terms = ', '.join(f'{k}={v:.4g}' for k, v in fit.items())
        print(f'{name}: {terms}; in-sample MAPE {errors[name]:.1f}%')
    print(f'saved {args.out}')
    return table


if __name__ == '__main__':
    entry(__file__, main)
