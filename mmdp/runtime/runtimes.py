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
