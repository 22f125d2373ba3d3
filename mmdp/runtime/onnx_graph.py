"""A module traced to an ONNX graph in memory: what the ort and trt runtimes run, exported as
tools/deploy.py exports the detector (TorchScript exporter, the same opset)."""
import io
import warnings

import torch

from mmdp.deploy.onnx_export import OPSET


def onnx_bytes(module: torch.nn.Module, inputs) -> bytes:
    """The serialised ONNX model of `module(*inputs)`; inputs are named input0, input1, ..."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter's deprecation notice, once per graph of a latency grid.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(module, tuple(inputs), buffer,
                          input_names=[f'input{i}' for i in range(len(inputs))],
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()
