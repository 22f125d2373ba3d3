"""Check latency models against end-to-end timings of random pruned backbones (or, for a
whole-detector table, random pruned detectors).

    python tools/validate_latency.py CONFIG --table TABLE -n 50 [--out-dir DIR]
        [--runtime torch|cudagraph|compile|ort|trt]

Samples n random structures (widths on the table's grid, about a quarter of the blocks removed),
predicts each with every latency model (and the plain, unfitted sum of the table entries), times
each end to end, and reports per model the mean absolute percentage error (raw, and after scaling
so that the dense backbone is exact) and the Spearman rank correlation. The end-to-end timings run
in `--runtime`, the table's runtime (ort / trt: each pruned backbone exported to ONNX; compile:
each compiled by torch.compile for its shapes). Writes
latency_validation.json and latency_validation.png to --out-dir (default: the table's folder).

A whole-detector table (a config with `prunable_head`, or --head) is checked against whole
pruned detectors (head widths, attention heads, decoder layers and token settings drawn too),
each timed over one frame end to end in PyTorch eager, host code included.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mmdp.cli import check_device, check_writable, counts, entry  # noqa: E402
from mmdp.latency import (  # noqa: E402
    DTYPES, BilinearLutLatency, FlopsLatency, LatencyTable, LinearLutLatency,
    MeasuredDetectorLatency, MeasuredLatency, build_from_config, device_name, sample_choices)
from mmdp.config_utils import load_config  # noqa: E402
from mmdp.fileio import atomic_write, atomic_write_json  # noqa: E402
from mmdp.runtime.runtimes import (TABLE_RUNTIMES, add_runtime_argument,  # noqa: E402
                                   check_runtime, resolve_runtime)
from mmdp.structure import StructureChoice, derive_structure  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='mmengine config of a detector or a bare backbone')
    parser.add_argument('--table', required=True, help='latency table from profile_latency.py')
    parser.add_argument('-n', type=counts(2), default=50,
                        help='random structures to check (>= 2 for a rank correlation)')
    parser.add_argument('--out-dir', help="where the JSON and the plot go; default: the table's "
                        'folder')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp32')
    add_runtime_argument(parser, TABLE_RUNTIMES)
    parser.add_argument('--input-shape', type=int, nargs=4, metavar=('N', 'C', 'H', 'W'),
                        help="backbone input; default: the config's latency_input_shape")
    parser.add_argument('--repeats', type=counts(1), default=100,
                        help='timed runs per measurement')
    parser.add_argument('--warmup', type=counts(0), default=10)
    parser.add_argument('--removal', type=float, default=0.25,
                        help='probability that a block is removed')
    parser.add_argument('--seed', type=int, default=1, help='differs from the profiling seed')
    parser.add_argument('--head', help="the detector's head of a whole-detector table, e.g. "
                        "pts_bbox_head; default: the config's `prunable_head`")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=counts(1),
                        help='CPU threads of torch and ONNX Runtime (torch.set_num_threads)')
    args = resolve_runtime(parser.parse_args(argv))
    if not 0 <= args.removal <= 1:
        parser.error(f'--removal must lie in [0, 1], found {args.removal}')
    args.out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.table))
    return args


def figures(predicted: np.ndarray, measured: np.ndarray, dense_pred: float,
            dense_ms: float) -> dict:
    scaled = predicted * dense_ms / dense_pred
    return {'mape': float(100 * np.mean(np.abs(predicted - measured) / measured)),
            'mape_dense_scaled': float(100 * np.mean(np.abs(scaled - measured) / measured)),
            'spearman': float(spearmanr(predicted, measured).statistic)}


def save_plot(path: str, measured: np.ndarray, predictions: dict, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 6))
    for name, values in predictions.items():
        ax.scatter(measured, values, s=14, label=name, alpha=0.8)
    everything = np.concatenate([measured, *predictions.values()])
    lims = [everything.min() * 0.95, everything.max() * 1.05]
    ax.plot(lims, lims, 'k--', lw=1, label='exact')
    ax.set(xlim=lims, ylim=lims, xlabel='measured end to end (ms)', ylabel='predicted (ms)',
           title=title)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format='png'))
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_device(args.device)
    check_runtime(args.runtime, args.device)
    check_writable(args.out_dir, '--out-dir')
    if args.threads:
        torch.set_num_threads(args.threads)
    model, input_shape = build_from_config(args.config, args.input_shape)
    head = args.head or load_config(args.config).get('prunable_head')
    if head and (args.runtime != 'torch' or args.dtype != 'fp32'):
        raise ValueError(f'a whole-detector table is validated in --runtime torch --dtype fp32 '
                         f'(the detector timed end to end), not {args.runtime} {args.dtype}')
    structure = derive_structure(model, input_shape, head=head)
    backbone = model.get_submodule(structure.backbone) if structure.backbone else model
    table = LatencyTable.load(args.table, device=device_name(args.device),
                              input_shape=input_shape, runtime=args.runtime, dtype=args.dtype)
    table.check_structure(structure)

    def timed():
        if head:
            return MeasuredDetectorLatency(model, structure, args.device, args.repeats,
                                           args.warmup)
        return MeasuredLatency(backbone, input_shape, structure, args.device, args.dtype,
                               args.mode, args.repeats, args.warmup)
    models = {'lut_bilinear': BilinearLutLatency(table), 'lut_linear': LinearLutLatency(table),
              'lut_sum': BilinearLutLatency(table, fitted=False), 'flops': FlopsLatency(table)}
    if not head:  # the measured model is the truth itself for a whole detector
        models['measured'] = timed()
    truth = timed()

    dense = StructureChoice()
    dense_ms = truth.predict(dense)
    dense_pred = {name: m.predict(dense) for name, m in models.items()}
    choices = sample_choices(structure, table.widths, args.n, args.seed, args.removal)
    measured, predicted, samples = [], {name: [] for name in models}, []
    for choice in tqdm(choices, desc='validate', unit='net'):
        ms = truth.predict(choice)
        measured.append(ms)
        pred = {name: m.predict(choice) for name, m in models.items()}
        for name, value in pred.items():
            predicted[name].append(value)
        samples.append({'widths': choice.all_widths(structure),
                        'removed_blocks': sorted(choice.removed_blocks), 'measured_ms': ms,
                        'predicted_ms': pred})
    measured = np.array(measured)
    predicted = {name: np.array(v) for name, v in predicted.items()}
    results = {name: figures(predicted[name], measured, dense_pred[name], dense_ms)
               for name in models}

    kind = 'CPU' if torch.device(args.device).type == 'cpu' else 'GPU'
    print(f'{args.n} structures on {table.meta["device"]} ({kind}), input {list(input_shape)}, '
          f'{args.runtime} {args.dtype}; dense {dense_ms:.3f} ms, measured '
          f'{measured.min():.3f}..{measured.max():.3f} ms')
    print(f'{"model":<14}{"MAPE %":>9}{"MAPE % (dense-scaled)":>24}{"Spearman":>10}')
    for name, r in results.items():
        print(f'{name:<14}{r["mape"]:>9.1f}{r["mape_dense_scaled"]:>24.1f}'
              f'{r["spearman"]:>10.3f}')

    os.makedirs(args.out_dir, exist_ok=True)
    report = {'table': os.path.abspath(args.table), 'table_meta': table.meta, 'n': args.n,
              'seed': args.seed, 'removal': args.removal, 'device': table.meta['device'],
              'dense_ms': dense_ms, 'dense_predicted_ms': dense_pred, 'models': results,
              'samples': samples}
    atomic_write_json(os.path.join(args.out_dir, 'latency_validation.json'), report)
    save_plot(os.path.join(args.out_dir, 'latency_validation.png'), measured,
              predicted,
              f'{"whole detector" if head else structure.backbone or "backbone"} '
              f'{list(input_shape)} {args.runtime} '
              f'{args.dtype} ({kind})')
    print(f'saved {args.out_dir}/latency_validation.json and latency_validation.png')
    return report


if __name__ == '__main__':
    entry(__file__, main)
