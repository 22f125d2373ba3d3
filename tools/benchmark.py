"""Frames per second of a detector at batch 1 (six views): warm-up, device synchronisation,
fp32 or `--amp`, on test-set samples or, with `--fake-data`, random images of the configured size;
in PyTorch (`--runtime torch|compile`) or as its two exported graphs (`--runtime ort|trt`)."""
import argparse
import copy
import itertools
import json
import os.path as osp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner, load_checkpoint  # noqa: E402
from mmdet3d.registry import MODELS  # noqa: E402

from mmdp.checkpoint_compat import check_loadable  # noqa: E402
from mmdp.cli import UsageError, check_device, check_writable, counts, entry  # noqa: E402
from mmdp.config_utils import check_info_files, load_config  # noqa: E402
from mmdp.fileio import atomic_write_json  # noqa: E402
from mmdp.latency import LATENCY_MODELS, LatencyTable, device_name  # noqa: E402
from mmdp.latency.breakdown import module_timer  # noqa: E402
from mmdp.runtime.runtimes import (DEPLOYED_RUNTIMES, DETECTOR_RUNTIMES,  # noqa: E402
                                   check_runtime, detector_runner, runtime_meta)
from mmdp.structure import StructureChoice  # noqa: E402
from projects.streampetr.fake_inputs import fake_frame  # noqa: E402


# Timed parts of a detector: (module attribute, as named in the report).
PARTS = ('img_backbone', 'img_neck', 'pts_bbox_head')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Benchmark detector FPS at batch 1')
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', help='weights; random initialisation if absent')
    parser.add_argument('--samples', type=counts(1), default=50, help='timed frames (>= 1)')
    parser.add_argument('--warmup', type=counts(0), default=5, help='untimed frames first')
    parser.add_argument('--runtime', choices=DETECTOR_RUNTIMES + DEPLOYED_RUNTIMES,
                        default='torch', help='ort / trt: the graphs of tools/deploy.py, '
                        'exported from the model first (see docs/deployment.md)')
    parser.add_argument('--threads', type=counts(1),
                        help='CPU threads of torch and ONNX Runtime (torch.set_num_threads)')
    parser.add_argument('--amp', action='store_true', help='fp16 autocast (CUDA) / bf16 (CPU)')
    parser.add_argument('--fake-data', action='store_true',
                        help='random images at the config\'s img_size instead of the test set')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--latency-table',
                        help='also print the backbone latency each latency model predicts '
                        'from this table (profiled on this device at this input) next to the '
                        'measured one')
    parser.add_argument('--out', help='write the figures to this JSON file')
    parser.add_argument('--allow-partial-load', action='store_true',
                        help='the checkpoint may miss or add keys or shapes; by default every '
                        'key must fit the model')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def load_table(table_path, device, batch_shape, dtype, runtime) -> LatencyTable:
    """The latency table, checked against this device, input, dtype and runtime before
    anything is timed."""
    n, views = batch_shape[:2]
    return LatencyTable.load(table_path, device=device_name(device), dtype=dtype, runtime=runtime,
                             input_shape=(n * views, *batch_shape[2:]))


def predicted_vs_measured(table, model, measured_ms):
    """Backbone latency predicted by each table-based model for this model's structure (dense,
    or the `widths` / `removed_blocks` of a `PrunedResNet`), next to the measured one."""
    prefix = f'{table.structure.backbone}.' if table.structure.backbone else ''
    backbone = model.img_backbone
    choice = StructureChoice(
        {prefix + g: w for g, w in getattr(backbone, 'widths', {}).items()},
        [prefix + b for b in getattr(backbone, 'removed_blocks', ())])
    predicted = {name: LATENCY_MODELS.get(name)(table=table).predict(choice)
                 for name in ('lut_bilinear', 'lut_linear', 'flops')}
    for name, ms in predicted.items():
        print(f'backbone latency: {name} predicts {ms:.2f} ms, measured {measured_ms:.2f} ms '
              f'({100 * (ms - measured_ms) / measured_ms:+.1f}%)')
    return dict(table=table.path, measured_backbone_ms=measured_ms,
                predicted_backbone_ms=predicted)


def main(argv=None):
    args = parse_args(argv)
    check_device(args.device)
    check_runtime(args.runtime, args.device)
    deployed = args.runtime in DEPLOYED_RUNTIMES
    if deployed and args.amp:
        raise UsageError(f'--amp is PyTorch autocast; --runtime {args.runtime} runs the fp32 '
                         'graphs (fp16 ones: tools/deploy.py --fp16)')
    if deployed and args.latency_table:
        raise UsageError(f'--latency-table: under --runtime {args.runtime} the backbone and '
                         'neck are one graph, so the backbone alone is not timed; check an '
                         f'{args.runtime} table with tools/validate_latency.py --runtime '
                         f'{args.runtime}')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.checkpoint and not osp.isfile(args.checkpoint):
        raise UsageError(f'checkpoint {args.checkpoint} does not exist')
    if args.out:
        check_writable(osp.dirname(osp.abspath(args.out)), '--out folder')
    cfg = load_config(args.config, args.cfg_options)
    if not args.fake_data:
        check_info_files(cfg, ['test'], evaluators=False)
    table = load_table(args.latency_table, device, (1, 6, 3, *cfg.img_size),
                       'fp16' if args.amp else 'fp32', args.runtime) if args.latency_table else None
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    if cfg.get('custom_imports'):
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**cfg.custom_imports)
    model = MODELS.build(cfg.model)
    if args.checkpoint:
        if not args.allow_partial_load:
            check_loadable(model, args.checkpoint, args.config)
        load_checkpoint(model, args.checkpoint, map_location='cpu')
    else:
        model.init_weights()
    model.to(device).eval()
    total = args.warmup + args.samples
    if args.fake_data:
        batches = (fake_frame(*cfg.img_size, index=i) for i in range(total))
    else:
        loader_cfg = cfg.test_dataloader.copy()
        loader_cfg.num_workers, loader_cfg.persistent_workers = 2, False
        batches = Runner.build_dataloader(loader_cfg)
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise UsageError(f'no frame was timed: the test set of {args.config} is empty; use '
                         '--fake-data')
    batches = itertools.chain([first], batches)
    example = model.data_preprocessor(copy.deepcopy(first), False) if deployed else None
    run = detector_runner(model, args.runtime, device, example)
    amp_dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    times = []
    # Deployed graphs time themselves; in PyTorch, hooks time the named submodules.
    parts = [] if deployed else [p for p in PARTS if hasattr(model, p)]
    with torch.no_grad(), module_timer(model, parts, device) as hooked:
        part_times = run.part_times if deployed else hooked
        for i, batch in enumerate(batches):
            if i >= total:
                break
            if device.type == 'cuda':
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
                data = model.data_preprocessor(batch, False)
                run(data)
                if device.type == 'cuda':
                    torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
            else:  # warm-up frames do not count in the breakdown either
                for v in part_times.values():
                    v.clear()
    if not times:
        raise UsageError(f'no frame was timed: the test set of {args.config} gave fewer than '
                         f'{args.warmup + 1} samples; lower --warmup or use --fake-data')
    ms = 1000 * np.asarray(times)
    # Means, so that the parts add up to the mean frame time.
    breakdown = {p: float(1000 * np.mean(t)) for p, t in part_times.items()}
    # What the named modules do not cover: data preprocessing, decoding, packing the results.
    breakdown['other'] = float(ms.mean()) - sum(breakdown.values())
    result = dict(config=args.config, checkpoint=args.checkpoint, device=str(device),
                  device_name=torch.cuda.get_device_name(device) if device.type == 'cuda'
                  else 'cpu', runtime=args.runtime,
                  precision='amp' if args.amp else 'fp32', batch_size=1,
                  views=6, frames=len(times), median_ms=float(np.median(ms)),
                  mean_ms=float(ms.mean()), fps=float(1000 / np.median(ms)),
                  breakdown_ms=breakdown, threads=torch.get_num_threads(),
                  torch=torch.__version__, **runtime_meta(args.runtime, device))
    if table is not None:
        result['latency'] = predicted_vs_measured(table, model, breakdown['img_backbone'])
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == '__main__':
    entry(__file__, main)
