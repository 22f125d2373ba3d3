"""Export a StreamPETR detector (dense or exported pruned) to its two deployment graphs and
check them against PyTorch.

    python tools/deploy.py CONFIG CHECKPOINT --out DIR [--fp16] [--frames 3]

Writes DIR/backbone_neck.onnx (images -> features; fp16 with --fp16) and DIR/head.onnx (one
head step: features, the frame's img2lidar / focal lengths / ego motion / time gap / continuation
flag, and the memory queue in; last-layer logits, box codes and the next queue out; fp32), then
runs both in ONNX Runtime (CPU) over a random sequence with a scene reset and writes the largest
differences from PyTorch to DIR/deploy.json. Where `tensorrt` imports and CUDA is present it also
builds TensorRT engines of both graphs, fp32 (TF32 off) and fp16 (the backbone + neck in fp16, the
head fp32, as deployed; only fp16 with --fp16), writes them as DIR/*_{fp32,fp16}.engine and checks
them against PyTorch the same way; otherwise that step says it is skipped. This repository's CI
has no GPU: the TensorRT step has not run there. CHECKPOINT may be `none`.
"""
import argparse
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

import torch  # noqa: E402

from mmdp.deploy import export_onnx  # noqa: E402
from mmdp.deploy.onnx_export import BACKBONE  # noqa: E402
from mmdp.deploy.check import compare_with_torch, sequence  # noqa: E402
from mmdp.fileio import atomic_write_json  # noqa: E402
from mmdp.runtime.detector import build_detector  # noqa: E402

TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export StreamPETR to ONNX and check it')
    parser.add_argument('config')
    parser.add_argument('checkpoint', help="weights, or 'none' for random ones")
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--fp16', action='store_true', help='backbone + neck graph in fp16')
    parser.add_argument('--frames', type=int, default=3,
                        help='frames of the check sequence (>= 3; the last starts a new scene)')
    args = parser.parse_args(argv)
    for path in (args.config, ) + ((args.checkpoint, ) if args.checkpoint != 'none' else ()):
        if not osp.isfile(path):
            parser.error(f'{path} does not exist')
    if args.frames < 3:
        parser.error(f'--frames must be >= 3, found {args.frames}')
    return args


def tensorrt_status() -> str:
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        return f'skipped: tensorrt does not import ({err})'
    if not torch.cuda.is_available():
        return 'skipped: no CUDA device'
    return 'available'


def worst_of(diffs, fp16: bool) -> tuple:
    """(largest difference per output, tolerance, outputs checked, all within it)."""
    worst = {k: max(d[k] for d in diffs) for k in diffs[0]}
    # fp16 features move the scores by ~1e-5, enough to reorder near-equal ones in the top-k
    # of the decoding: only the raw outputs are compared then, with a tolerance fp16 meets.
    tolerance, checked = (FP16_TOLERANCE, ('logits', 'box_codes')) if fp16 else (
        TOLERANCE, tuple(worst))
    return worst, tolerance, checked, all(worst[k] <= tolerance for k in checked)


def check_tensorrt(model, out_dir: str, frames, fp16_graphs: bool) -> dict:
    """Per precision: TensorRT engines of the exported graphs, their files and their
    differences from PyTorch over `frames`."""
    from mmdp.runtime.trt import Engine
    results = {}
    for precision in ('fp16', ) if fp16_graphs else ('fp32', 'fp16'):
        files = []

        def open_session(path, precision=precision, files=files):
            is_backbone = osp.basename(path) == BACKBONE
            engine = Engine(path, 'cuda', fp16=precision == 'fp16' and is_backbone)
            files.append(osp.join(out_dir, osp.basename(path)[:-len('.onnx')]
                                  + f'_{precision}.engine'))
            engine.save(files[-1])
            return engine
        diffs = compare_with_torch(model, out_dir, frames, open_session)
        worst, tolerance, checked, ok = worst_of(diffs, precision == 'fp16')
        results[precision] = dict(engines=files, trt_vs_torch=diffs, worst=worst,
                                  tolerance=tolerance, checked=checked, agree=ok)
        print(f'TensorRT {precision}: ' + ', '.join(f'{k} {worst[k]:.2e}' for k in checked)
              + f" ({'within' if ok else 'above'} {tolerance})")
    return results


def main(argv=None):
    args = parse_args(argv)
    model, cfg = build_detector(args.config, None if args.checkpoint == 'none'
                                else args.checkpoint)
    frames = sequence(model, cfg.img_size, args.frames)
    paths = export_onnx(model, frames[0], args.out, fp16=args.fp16)
    print(f"exported {', '.join(paths.values())}")
    diffs = compare_with_torch(model, args.out, frames)
    worst, tolerance, checked, ok = worst_of(diffs, args.fp16)
    for i, d in enumerate(diffs):
        print(f'frame {i}: ' + ', '.join(f'{k} {v:.2e}' for k, v in d.items()))
    trt = tensorrt_status()
    print(f'TensorRT: {trt}')
    engines = check_tensorrt(model, args.out, frames, args.fp16) if trt == 'available' else {}
    atomic_write_json(osp.join(args.out, 'deploy.json'), dict(
        config=args.config, checkpoint=args.checkpoint, fp16=args.fp16, graphs=paths,
        ort_vs_torch=diffs, worst=worst, tolerance=tolerance, checked=checked, agree=ok,
        tensorrt=dict(status=trt, **engines)))
    bad = [p for p, r in engines.items() if not r['agree']]
    if bad:
        print(f'error: TensorRT ({", ".join(bad)}) differs from PyTorch by more than its '
              'tolerance; see deploy.json', file=sys.stderr)
        return 1
    if not ok:
        print(f'error: ONNX Runtime differs from PyTorch by more than {tolerance} in '
              f'{[k for k in checked if worst[k] > tolerance]}: {worst}',
              file=sys.stderr)
        return 1
    print(f"ONNX Runtime agrees with PyTorch within {tolerance} ({', '.join(checked)}) over "
          f'{len(frames)} frames')
    return 0


if __name__ == '__main__':
    from mmdp.cli import entry  # noqa: E402  (after this checkout is on sys.path)
    entry(__file__, main)
