"""The runtimes a detector or a latency table is timed in, under one set of names.

torch: PyTorch eager. cudagraph: one captured CUDA graph replayed (fixed shapes, CUDA only).
compile: torch.compile (inductor). ort: ONNX Runtime on ONNX exports (the two graphs of
tools/deploy.py for a detector, one graph per timed conv or part for a table). trt: TensorRT
engines built from those graphs (CUDA, optional `tensorrt` package).
"""
import torch

RUNTIMES = ('torch', 'cudagraph', 'compile', 'ort', 'trt')
# What a whole detector (data samples in, boxes out) runs in: the PyTorch model in process, or
# its exported graphs with the detector's host code around them (mmdp.runtime.deployed).
DETECTOR_RUNTIMES = ('torch', 'compile')
DEPLOYED_RUNTIMES = ('ort', 'trt')
# Runtimes a latency table is profiled in: per-layer convs, head parts and whole backbones timed
# by mmdp.latency.Timer in the mode of the runtime (compile: a table's convs share one dynamic
# graph, each whole backbone is compiled for its shapes; mmdp.runtime.compiled).
TABLE_RUNTIMES = ('torch', 'cudagraph', 'compile', 'ort', 'trt')
TIMER_MODE = {'torch': 'eager', 'cudagraph': 'cudagraph', 'compile': 'compile', 'ort': 'ort',
              'trt': 'trt'}
# Runtimes whose module of mmdp.runtime checks it can run here (`require`) and binds a module to
# a timed runner (`bind`).
BACKENDS = {'compile': 'compiled', 'ort': 'ort', 'trt': 'trt'}
# The latency tools' former --mode, and tables' former `meta.mode`.
RUNTIME_OF_MODE = {'eager': 'torch', 'cudagraph': 'cudagraph'}


def check_runtime(runtime: str, device) -> None:
    """ValueError at once, naming what is missing, where `runtime` cannot run on `device`."""
    if runtime in BACKENDS:
        from importlib import import_module
        import_module(f'mmdp.runtime.{BACKENDS[runtime]}').require(device)
    elif runtime == 'cudagraph' and torch.device(device).type != 'cuda':
        raise ValueError(f'--runtime cudagraph needs a CUDA device, found --device {device}')


def runtime_meta(runtime: str, device) -> dict:
    """What a latency table records about its runtime besides its name: versions, execution
    providers, threads (empty for the PyTorch runtimes, whose version every table records)."""
    if runtime not in DEPLOYED_RUNTIMES:
        return {}
    from importlib import import_module
    return import_module(f'mmdp.runtime.{runtime}').meta(device)


def detector_runner(model, runtime: str, device, example=None):
    """`run(data)`: one frame through `model` (its forward in predict mode) in `runtime`.

    torch.compile is applied to the image backbone and neck, whose shapes are fixed; the head's
    Python (memory queue, decoding) stays eager, as in the two-engine deployment. ort / trt run
    the two exported graphs, traced on `example` (one preprocessed frame), and time their calls
    in `run.part_times`."""
    if runtime in DEPLOYED_RUNTIMES:
        if example is None:
            raise ValueError(f'runtime {runtime!r} exports the detector first: give an example '
                             'frame')
        from .deployed import deployed_runner
        return deployed_runner(model, runtime, device, example)
    if runtime not in DETECTOR_RUNTIMES:
        raise ValueError(f'runtime {runtime!r} cannot run a whole detector; use one of '
                         f'{DETECTOR_RUNTIMES + DEPLOYED_RUNTIMES}')
    if runtime == 'compile':
        for name in ('img_backbone', 'img_neck'):
            setattr(model, name, torch.compile(getattr(model, name)))

    @torch.no_grad()
    def run(data):
        # At dynamo's recompile limit (8 shapes or precisions of one module code) a hard
        # failure, not its silent fall-back to eager that would time the wrong runtime.
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=runtime == 'compile'):
            return model(**data, mode='predict')

    return run


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
