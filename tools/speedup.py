"""Paired speed-up of detector A over detector B: both built in one process, warmed up, then
timed alternately on the same random frames (A B, B A, ...); prints each model's median frame
time and the ratio's median with its spread over the rounds, and writes them to JSON.

    python tools/speedup.py A_CONFIG A_CKPT --against B_CONFIG B_CKPT [--rounds 20]
        [--warmup 3] [--runtime torch] [--device cpu] [--threads T] [--amp] --out speedup.json

A checkpoint may be `none` (random initialisation). Speed-up = B's frame time / A's: give the
pruned model as A and the dense one as B. Each model runs at its own config's `img_size` (random
frames of that size), so a JointPruning model that chose a smaller input is timed at it.
"""
import argparse
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from mmdp.fileio import atomic_write_json  # noqa: E402
from mmdp.latency.timer import Timer, device_name  # noqa: E402
from mmdp.runtime.detector import build_detector, preprocessed_frames  # noqa: E402
from mmdp.runtime.paired import paired_speedup  # noqa: E402
from mmdp.runtime.runtimes import (DEPLOYED_RUNTIMES, DETECTOR_RUNTIMES,  # noqa: E402
                                   check_runtime, detector_runner)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Paired speed-up of two detectors')
    parser.add_argument('config')
    parser.add_argument('checkpoint', help="weights of A, or 'none' for random ones")
    parser.add_argument('--against', nargs=2, metavar=('B_CONFIG', 'B_CKPT'), required=True)
    parser.add_argument('--rounds', type=int, default=20, help='timed rounds (>= 20)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed frames per model first')
    parser.add_argument('--runtime', choices=DETECTOR_RUNTIMES + DEPLOYED_RUNTIMES,
                        default='torch', help='ort / trt: the two graphs of tools/deploy.py')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int,
                        help="CPU threads of torch (default: torch's). On a shared machine 1 "
                        'keeps a neighbour from stalling the threads of every operator')
    parser.add_argument('--amp', action='store_true',
                        help='both models under autocast: fp16 on CUDA, bf16 on the CPU (the '
                             'heads stay fp32, as the published model runs them)')
    parser.add_argument('--out', required=True, help='JSON file of the figures')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='overrides applied to both configs')
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be >= 1, found {args.threads}')
    if args.amp and args.runtime in DEPLOYED_RUNTIMES:
        parser.error(f'--amp times PyTorch under autocast; with --runtime {args.runtime} export '
                     'an fp16 graph instead (tools/deploy.py --fp16)')
    if args.rounds < 20 or args.warmup < 0:
        parser.error(f'--rounds must be >= 20 and --warmup >= 0, found {args.rounds}, '
                     f'{args.warmup}')
    for path in (args.config, args.against[0]) + tuple(
            c for c in (args.checkpoint, args.against[1]) if c != 'none'):
        if not osp.isfile(path):
            parser.error(f'{path} does not exist')
    return args


def autocast(run, device, dtype, enabled: bool):
    def wrapped(data):
        with torch.autocast(device.type, dtype=dtype, enabled=enabled):
            return run(data)
    return wrapped


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print(f'error: --device {args.device}: no CUDA device here', file=sys.stderr)
        return 2
    check_runtime(args.runtime, device)
    if args.runtime == 'compile':
        # Compiled code of earlier comparisons in this process (tools/gpu_check.py calls this
        # one in a loop) would pile up to dynamo's recompile limit.
        torch._dynamo.reset()
    models = []
    for config, ckpt in ((args.config, args.checkpoint), tuple(args.against)):
        model, cfg = build_detector(config, None if ckpt == 'none' else ckpt,
                                    args.cfg_options, device)
        models.append((model, tuple(cfg.img_size)))
    (model_a, size), (model_b, size_b) = models
    if size != size_b:  # input resolution is one of JointPruning's dimensions
        print(f'note: each model runs at its config\'s img_size: A {size}, B {size_b}')
    def frames(i):
        return tuple(preprocessed_frames(m, hw, 1, start=i)[0]
                     for m, hw in ((model_a, size), (model_b, size_b)))

    amp_dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    # ort / trt export each model's graphs, traced on a frame of its own input size.
    run_a, run_b = (autocast(detector_runner(m, args.runtime, device, example=example), device,
                             amp_dtype, args.amp) for m, example in zip((model_a, model_b),
                                                                         frames(0)))

    timer = Timer(device)
    result = paired_speedup(run_a, run_b, frames, timer, args.rounds, args.warmup)
    s = result['speedup']
    print(f"A {args.config}: median {result['ms_a']['median']:.2f} ms per frame")
    print(f"B {args.against[0]}: median {result['ms_b']['median']:.2f} ms per frame")
    print(f"speed-up of A over B: median {s['median']:.3f}x, IQR {s['p25']:.3f}-{s['p75']:.3f}, "
          f"5-95% {s['p5']:.3f}-{s['p95']:.3f} over {args.rounds} rounds")
    result.update(a=dict(config=args.config, checkpoint=args.checkpoint),
                  b=dict(config=args.against[0], checkpoint=args.against[1]),
                  runtime=args.runtime, device=str(device), device_name=device_name(device),
                  precision=f'amp-{str(amp_dtype)[6:]}' if args.amp else 'fp32',
                  batch_size=1, views=6, img_size=list(size), img_size_b=list(size_b),
                  torch=torch.__version__)
    atomic_write_json(args.out, result)
    print(f'written to {args.out}')
    return 0


if __name__ == '__main__':
    from mmdp.cli import entry  # noqa: E402  (after this checkout is on sys.path)
    entry(__file__, main)
