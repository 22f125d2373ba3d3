"""The `ort` runtime: ONNX Runtime sessions of exported graphs, on the CPU execution provider
(the CUDA one for a CUDA device, where onnxruntime-gpu provides it).

Intra-op threads are torch's thread count (`--threads`, else OMP_NUM_THREADS), so the thread
count in a table's device name is ORT's too; inter-op parallelism is off (sequential graphs).
"""
import torch

from .onnx_graph import onnx_bytes

CUDA_EP, CPU_EP = 'CUDAExecutionProvider', 'CPUExecutionProvider'


def require(device='cpu'):
    """onnxruntime, or ValueError saying why `--runtime ort` cannot run on `device` here."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ValueError(f'--runtime ort: onnxruntime does not import ({e}); install '
                         'requirements.txt (onnxruntime)') from None
    if torch.device(device).type == 'cuda' and CUDA_EP not in \
            onnxruntime.get_available_providers():
        raise ValueError(f'--runtime ort on {device}: onnxruntime {onnxruntime.__version__} '
                         f'has no {CUDA_EP} (providers: '
                         f"{', '.join(onnxruntime.get_available_providers())}); install "
                         'onnxruntime-gpu or use --device cpu')
    return onnxruntime


def providers(device) -> list:
    return [CUDA_EP, CPU_EP] if torch.device(device).type == 'cuda' else [CPU_EP]


def threads() -> int:
    return torch.get_num_threads()


def session(model, device='cpu'):
    """An InferenceSession of `model` (ONNX bytes or a file path) with explicit threads."""
    ort = require(device)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no per-session notices in a latency grid
    return ort.InferenceSession(model, options, providers=providers(device))


def meta(device) -> dict:
    """What a latency table profiled in ORT records besides the common metadata."""
    ort = require(device)
    return {'onnxruntime': ort.__version__, 'providers': providers(device),
            'intra_op_threads': threads(), 'inter_op_threads': 1}


def bind(module: torch.nn.Module, inputs, device='cpu'):
    """`run()`: one run of `module(*inputs)` exported to ONNX, in an ORT session fed `inputs`;
    it returns the outputs (numpy arrays) once computed, so a host clock times it. On a CUDA
    device inputs and outputs stay on the device (I/O binding), as deployed."""
    sess = session(onnx_bytes(module, inputs), device)
    names = [i.name for i in sess.get_inputs()]
    if torch.device(device).type != 'cuda':
        feeds = {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)}
        return lambda: sess.run(None, feeds)
    ort = require(device)
    binding = sess.io_binding()
    index = torch.device(device).index or 0
    for name, x in zip(names, inputs):
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(
            x.detach().cpu().numpy(), 'cuda', index))
    for out in sess.get_outputs():
        binding.bind_output(out.name, 'cuda', index)

    def run():
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding.get_outputs()  # OrtValues on the device: no copy is timed
    return run
