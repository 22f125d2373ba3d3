"""Export a StreamPETR detector (dense or exported pruned) to its two deployment graphs and
check them against PyTorch.

    python tools/deploy.py CONFIG CHECKPOINT --out DIR [--fp16] [--frames 3]

Writes DIR/backbone_neck.onnx (images -> features; fp16 with --fp16) and DIR/head.onnx (one
head step: features, the frame's img2lidar / focal lengths / ego motion / time gap / continuation
flag, and the memory queue in; last-layer logits, box codes and the next queue out; fp32), then
runs both in ONNX Runtime (CPU) over a random sequence with a scene reset and writes the largest
differences from PyTorch to DIR/deploy.json. TensorRT engines are built where `tensorrt` imports
and CUDA is present; otherwise that step says it is skipped. CHECKPOINT may be `none`.
"""
import argparse
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

import torch  # noqa: E402

from mmdp.deploy import export_onnx  # noqa: E402
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


def main(argv=None):
    args = parse_args(argv)
    model, cfg = build_detector(args.config, None if args.checkpoint == 'none'
                                else args.checkpoint)
    frames = sequence(model, cfg.img_size, args.frames)
    paths = export_onnx(model, frames[0], args.out, fp16=args.fp16)
    print(f"exported {', '.join(paths.values())}")
    diffs = compare_with_torch(model, args.out, frames)
    worst = {k: max(d[k] for d in diffs) for k in diffs[0]}
    # fp16 features move the scores by ~1e-5, enough to reorder near-equal ones in the top-k
    # of the decoding: only the raw outputs are compared then, with a tolerance fp16 meets.
    tolerance, checked = (FP16_TOLERANCE, ('logits', 'box_codes')) if args.fp16 else (
        TOLERANCE, tuple(worst))
    ok = all(worst[k] <= tolerance for k in checked)
    for i, d in enumerate(diffs):
        print(f'frame {i}: ' + ', '.join(f'{k} {v:.2e}' for k, v in d.items()))
    trt = tensorrt_status()
    print(f'TensorRT: {trt}')
    atomic_write_json(osp.join(args.out, 'deploy.json'), dict(
        config=args.config, checkpoint=args.checkpoint, fp16=args.fp16, graphs=paths,
        ort_vs_torch=diffs, worst=worst, tolerance=tolerance, checked=checked, agree=ok,
        tensorrt=trt))
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
