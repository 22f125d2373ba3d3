"""The runtimes a detector or a latency table is timed in, under one set of names.

torch: PyTorch eager. cudagraph: one captured CUDA graph replayed (fixed shapes, CUDA only).
compile: torch.compile (inductor). ort: ONNX Runtime on the graphs tools/deploy.py exports.
trt: TensorRT engines built from those graphs (GPU, optional `tensorrt` package).
"""
import torch

RUNTIMES = ('torch', 'cudagraph', 'compile', 'ort', 'trt')
# What a whole detector (data samples in, boxes out) can be run in by `detector_runner`.
DETECTOR_RUNTIMES = ('torch', 'compile')


def detector_runner(model, runtime: str, device):
    """`run(data)`: one frame through `model` (its forward in predict mode) in `runtime`.

    torch.compile is applied to the image backbone and neck, whose shapes are fixed; the head's
    Python (memory queue, decoding) stays eager, as in the two-engine deployment."""
    if runtime not in DETECTOR_RUNTIMES:
        raise ValueError(f'runtime {runtime!r} cannot run a whole detector here; use one of '
                         f'{DETECTOR_RUNTIMES} (ort / trt: tools/deploy.py)')
    if runtime == 'compile':
        for name in ('img_backbone', 'img_neck'):
            setattr(model, name, torch.compile(getattr(model, name)))

    @torch.no_grad()
    def run(data):
        return model(**data, mode='predict')

    return run


# Runtimes a latency table can be profiled in: per-layer convs and whole backbones timed by
# mmdp.latency.Timer, whose `mode` names them as the latency tools' former --mode did.
TABLE_RUNTIMES = ('torch', 'cudagraph')
TIMER_MODE = {'torch': 'eager', 'cudagraph': 'cudagraph'}
RUNTIME_OF_MODE = {mode: runtime for runtime, mode in TIMER_MODE.items()}


def add_runtime_argument(parser, choices=RUNTIMES):
    """--runtime (default torch), and the former --mode of the latency tools as its alias."""
    group = parser.add_mutually_exclusive_group()
    # No argparse default: it would let `--runtime torch --mode eager` pass unnoticed.
    group.add_argument('--runtime', choices=choices,
                       help='what the model runs in (default: torch; see docs/deployment.md)')
    group.add_argument('--mode', choices=sorted(RUNTIME_OF_MODE),
                       help='former name: eager = --runtime torch, cudagraph = --runtime '
                       'cudagraph')


def resolve_runtime(args):
    """After parsing: `args.runtime` set from a given --mode, and `args.mode` the Timer's mode
    of the runtime (None where the Timer cannot time it)."""
    if args.mode:
        args.runtime = RUNTIME_OF_MODE[args.mode]
    args.runtime = args.runtime or 'torch'
    args.mode = TIMER_MODE.get(args.runtime)
    return args
