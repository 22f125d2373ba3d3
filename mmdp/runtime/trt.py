"""The `trt` runtime: TensorRT engines built from exported graphs, on a CUDA device, where the
optional `tensorrt` package imports. Not run in this repository's CI (no GPU, no TensorRT)."""
from types import SimpleNamespace

import numpy as np
import torch

from mmdp.fileio import atomic_write

from .onnx_graph import onnx_bytes


def require(device='cuda'):
    """tensorrt, or ValueError saying why `--runtime trt` cannot run on `device` here."""
    try:
        import tensorrt
    except ImportError as e:
        raise ValueError(f'--runtime trt: tensorrt does not import here ({e}); it needs '
                         "NVIDIA's TensorRT Python package and a CUDA device; use --runtime ort "
                         'or torch') from None
    if torch.device(device).type != 'cuda' or not torch.cuda.is_available():
        raise ValueError(f'--runtime trt needs a CUDA device, found --device {device} '
                         f'(CUDA available: {torch.cuda.is_available()})')
    return tensorrt


def meta(device) -> dict:
    return {'tensorrt': require(device).__version__}


class Engine:
    """A TensorRT engine of one ONNX graph (bytes or a file path) with its inputs and outputs
    as CUDA tensors at fixed addresses: `enqueue()` runs it on torch's current stream. `run`
    and `get_inputs` follow onnxruntime's InferenceSession, so that the deployed detector can
    use either (mmdp.deploy.OrtStreamPETR)."""

    def __init__(self, model, device='cuda', fp16: bool = False):
        trt = require(device)
        if not isinstance(model, bytes):
            with open(model, 'rb') as f:
                model = f.read()
        logger = trt.Logger(trt.Logger.ERROR)
        builder = trt.Builder(logger)
        flag = getattr(trt.NetworkDefinitionCreationFlag, 'EXPLICIT_BATCH', None)
        network = builder.create_network(0 if flag is None else 1 << int(flag))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(model):
            raise RuntimeError(f'TensorRT cannot parse the graph: {parser.get_error(0)}')
        config = builder.create_builder_config()
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        else:  # fp32 means fp32: TensorRT would otherwise run convs and matmuls in TF32
            config.clear_flag(trt.BuilderFlag.TF32)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError('TensorRT could not build an engine of the graph')
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        self.context = self.engine.create_execution_context()
        self.inputs, self.outputs = {}, {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            numpy_dtype = trt.nptype(self.engine.get_tensor_dtype(name))
            dtype = torch.from_numpy(np.zeros(1, numpy_dtype)).dtype
            tensor = torch.empty(tuple(self.engine.get_tensor_shape(name)), dtype=dtype,
                                 device=device)
            self.context.set_tensor_address(name, tensor.data_ptr())
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[name] = tensor

    def save(self, path: str) -> None:
        """The serialized engine (a plan TensorRT's runtime loads on the same GPU model)."""
        def write(tmp):
            with open(tmp, 'wb') as f:
                f.write(self.engine.serialize())
        atomic_write(path, write)

    def enqueue(self):
        self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream)

    def get_inputs(self):
        types = {torch.float16: 'tensor(float16)'}
        return [SimpleNamespace(name=n, type=types.get(t.dtype, 'tensor(float)'))
                for n, t in self.inputs.items()]

    def run(self, output_names, feeds: dict) -> list:
        for name, array in feeds.items():
            self.inputs[name].copy_(torch.from_numpy(array))
        self.enqueue()
        torch.cuda.current_stream().synchronize()
        return [self.outputs[n].cpu().numpy() for n in (output_names or self.outputs)]


def bind(module: torch.nn.Module, inputs, device='cuda'):
    """`run()`: one enqueue of `module(*inputs)` as a TensorRT engine fed `inputs` (CUDA events
    time it, as the torch runtimes on a GPU)."""
    engine = Engine(onnx_bytes(module, inputs), device,
                    fp16=any(x.dtype == torch.float16 for x in inputs))
    for i, x in enumerate(inputs):
        engine.inputs[f'input{i}'].copy_(x)
    return engine.enqueue
