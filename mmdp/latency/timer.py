"""Median latency of a module on a device, in one of the runtimes a latency table is profiled
in: PyTorch eager, a CUDA-graph replay, torch.compile, ONNX Runtime or TensorRT on the module
exported to ONNX.
CUDA events time what runs on a GPU stream, `time.perf_counter` the CPU and ONNX Runtime (whose
runs return once their outputs are computed)."""
import platform
import statistics
import time

import torch

from mmdp.runtime.runtimes import BACKENDS

MODES = ('eager', 'cudagraph', 'compile', 'ort', 'trt')
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16}


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device) -> str:
    """The name latency tables are keyed by; on the CPU it includes the thread count, which
    changes every timing."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{cpu_name()} ({torch.get_num_threads()} threads)'


def cudnn_version(device):
    return torch.backends.cudnn.version() if torch.device(device).type == 'cuda' else None


class Timer:
    """Times `module(*inputs)` `repeats` times after `warmup` calls and returns the median in
    milliseconds. `mode='cudagraph'` captures one call in a CUDA graph and times its replays;
    `mode='compile'` times the module compiled by torch.compile (mmdp.runtime.compiled: bare
    convs of any width share one dynamic graph); `mode='ort'` / `'trt'` export the module to ONNX
    and time its ONNX Runtime session / TensorRT engine (mmdp.runtime.ort, mmdp.runtime.trt)
    on the same inputs."""

    def __init__(self, device='cpu', mode: str = 'eager', repeats: int = 100, warmup: int = 10):
        self.device = torch.device(device)
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, found {mode!r}')
        if mode == 'cudagraph' and self.device.type != 'cuda':
            raise ValueError(f"mode 'cudagraph' needs a CUDA device, found {self.device}; "
                             "use mode 'eager' on the CPU")
        if repeats < 1 or warmup < 0:
            raise ValueError(f'repeats must be >= 1 and warmup >= 0, found {repeats}, {warmup}')
        self.backend = None
        if mode in BACKENDS:  # fails here, before any work, where it cannot run
            from importlib import import_module
            self.backend = import_module(f'mmdp.runtime.{BACKENDS[mode]}')
            self.backend.require(self.device)
        self.mode, self.repeats, self.warmup = mode, repeats, warmup
        if self.device.type == 'cuda':
            # Tables and end-to-end timings must see the kernels deployment would pick.
            torch.backends.cudnn.benchmark = True

    @torch.no_grad()
    def __call__(self, module, *inputs) -> float:
        if self.backend is not None:  # compile, ort, trt: a runner bound to the module
            if self.mode == 'ort' or self.device.type != 'cuda':
                return self._host(self.backend.bind(module, inputs, self.device))
            with torch.cuda.device(self.device):
                run = self.backend.bind(module, inputs, self.device)
                for _ in range(self.warmup):
                    run()
                return self._events(run)
        if self.device.type != 'cuda':
            return self._host(lambda: module(*inputs))
        return self._cuda_graph(module, inputs) if self.mode == 'cudagraph' else self._cuda(
            module, inputs)

    def once(self, run) -> float:
        """Milliseconds of one `run()`, synchronised with the device: for timings that must
        interleave several models (a paired comparison), where `__call__`'s loop cannot."""
        if self.device.type != 'cuda':
            start = time.perf_counter()
            run()
            return (time.perf_counter() - start) * 1e3
        with torch.cuda.device(self.device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end)

    def _host(self, run) -> float:
        for _ in range(self.warmup):
            run()
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def _events(self, run) -> float:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        for start, end in zip(starts, ends):
            start.record()
            run()
            end.record()
        torch.cuda.synchronize(self.device)
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))

    def _cuda(self, module, inputs) -> float:
        with torch.cuda.device(self.device):
            for _ in range(self.warmup):
                module(*inputs)
            torch.cuda.synchronize(self.device)
            return self._events(lambda: module(*inputs))

    def _cuda_graph(self, module, inputs) -> float:
        with torch.cuda.device(self.device):
            # Warm up on a side stream (cuDNN autotuning, lazy init) before capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(max(self.warmup, 3)):
                    module(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                module(*inputs)
            for _ in range(self.warmup):
                graph.replay()
            torch.cuda.synchronize(self.device)
            return self._events(graph.replay)
