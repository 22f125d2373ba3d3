"""Wall time per named submodule of one forward pass (device-synchronised), for breakdowns such as
backbone / neck / head of a detector."""
import time
from contextlib import contextmanager

import torch


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@contextmanager
def module_timer(model: torch.nn.Module, names, device):
    """Yields a dict name -> list of seconds, one entry per call of that submodule."""
    times = {name: [] for name in names}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        starts = []

        def pre(_m, _i, starts=starts):
            _sync(device)
            starts.append(time.perf_counter())

        def post(_m, _i, _o, name=name, starts=starts):
            _sync(device)
            times[name].append(time.perf_counter() - starts.pop())

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield times
    finally:
        for h in handles:
            h.remove()
