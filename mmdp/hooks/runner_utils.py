"""What the pruning hooks need from the runner: the bare model, its optimizers and its prunable
structure."""
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from torch import nn

from mmdp.structure import Structure, derive_structure


def bare_model(runner) -> nn.Module:
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


def runner_optimizers(runner) -> list:
    wrapper = runner.optim_wrapper
    wrappers = wrapper.values() if isinstance(wrapper, OptimWrapperDict) else [wrapper]
    return [w.optimizer for w in wrappers]


def runner_structure(runner) -> Structure:
    """The prunable structure of the runner's model at the config's `latency_input_shape`
    (the input the latency table was profiled at)."""
    shape = runner.cfg.get('latency_input_shape')
    if shape is None:
        raise ValueError("the config has no 'latency_input_shape': set it to the (N, C, H, W) "
                         'of the backbone input the latency table is profiled at, e.g. '
                         '(6, 3, 256, 704) for six 704x256 views')
    # `prunable_head` (whole-detector configs): the head's dimensions join the structure.
    return derive_structure(bare_model(runner), shape, head=runner.cfg.get('prunable_head'))
