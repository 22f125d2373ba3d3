"""The `compile` runtime in a latency table: torch.compile (inductor) timings of a table's convs
and of whole pruned backbones.

A whole module (a pruned backbone end to end) is compiled for its fixed shapes, as the detector
runner compiles a deployed backbone, after `torch._dynamo.reset()`: every structure compiles on
its own, and no cache entry of an earlier structure adds to its guard checks.

A table's conv (a bare `nn.Conv2d`) cannot be compiled that way: inductor's conv lowering guards
every weight size (`guard_int_seq(weight.get_size())` in torch/_inductor/kernel/conv.py), so even
`dynamic=True` compiles one graph per (output, input) width pair (and `mark_dynamic` cannot keep
a size inductor specialises) -- 5998 graphs for the full-size table at step 32, 0.2-9 s each on
this project's CPU. Inductor lowers a conv that nothing fuses into to an extern aten convolution
on channels-last tensors (its layout optimisation: always with mkldnn on the CPU, by a flop
heuristic that favours a ResNet's convs on CUDA); so a table's conv runs that same aten call on
a channels-last input, its weight made channels-last in the graph, wrapped in a custom op whose
output size is plain arithmetic (aten's fake conv would guard the sizes that pick its backend).
One `dynamic=True` graph then covers every width, input size, stride and padding: dynamo splits
it only by kernel size 1 or larger, bias or none, and a map of one pixel (it specialises sizes of
1) -- 2 graphs for ResNet-18 and ResNet-50. Duck sizing is off so that sizes equal by chance (64
channels, 64 columns) do not split it further.
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn


@torch.library.custom_op('mmdp::conv2d', mutates_args=())
def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           stride: List[int], padding: List[int], dilation: List[int]) -> torch.Tensor:
    out = F.conv2d(x, weight, bias, stride, padding, dilation)
    return out.contiguous(memory_format=torch.channels_last)  # as the fake one says


@conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation):
    n, _, h, w = x.shape
    size = [(length + 2 * p - d * (k - 1) - 1) // s + 1 for length, k, s, p, d in
            zip((h, w), weight.shape[2:], stride, padding, dilation)]
    return x.new_empty((n, weight.shape[0], *size)).contiguous(
        memory_format=torch.channels_last)


@torch.compile(dynamic=True)
def _conv(x, weight, bias, stride, padding, dilation):
    # The weight is an input, as a compiled model's parameters are: inductor turns it
    # channels-last in every call (no freezing), so does this graph.
    weight = weight.contiguous(memory_format=torch.channels_last)
    return conv2d(x, weight, bias, stride, padding, dilation)


def require(device='cpu'):
    """ValueError saying why `--runtime compile` cannot run on `device` here: inductor needs a
    C++ compiler on the CPU, Triton on CUDA."""
    if torch.device(device).type == 'cuda':
        from torch.utils._triton import has_triton
        if not has_triton():
            raise ValueError(f'--runtime compile on {device}: triton does not import here '
                             '(inductor generates its CUDA kernels with it)')
        return
    from torch._inductor.cpp_builder import get_cpp_compiler
    try:
        get_cpp_compiler()
    except Exception as e:  # inductor's own error type varies between versions
        raise ValueError(f'--runtime compile on the CPU: inductor finds no C++ compiler ({e}); '
                         'install g++ or set CXX') from None


def bind(module: nn.Module, inputs, device='cpu'):
    """`run()`: one call of `module(*inputs)` compiled, the compilation done (the first call)."""
    # Dynamo's hard failure instead of its silent fall-back to eager at its recompile limit.
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True), \
            torch.fx.experimental._config.patch(use_duck_shape=False):
        if type(module) is nn.Conv2d:
            x, = inputs
            # Activations stay channels-last from conv to conv in a compiled backbone.
            args = (x.contiguous(memory_format=torch.channels_last), module.weight.detach(),
                    None if module.bias is None else module.bias.detach(),
                    list(module.stride), list(module.padding), list(module.dilation))
            _conv(*args)
            return lambda: _conv(*args)
        torch._dynamo.reset()
        compiled = torch.compile(module)
        compiled(*inputs)
        return lambda: compiled(*inputs)
