"""The training loss of sub-networks on one batch, without gradients and without side effects.

All sub-networks of one search step are evaluated on the same preprocessed batch with the same
random numbers (the head's denoising noise and dropout draw from an RNG reseeded per evaluation),
so their losses differ only through the sub-network. The model stays in training mode (the loss
needs it: denoising queries exist only in training) with its BatchNorm layers in eval mode, so
no running statistic moves (StreamPETR's backbone BN is frozen anyway, `norm_eval=True`). The
streaming memory (the detector's per-slot bookkeeping and the head's `memory_*` queue), which a
forward pass advances, is put back after every evaluation, so the training step that follows
sees the memory of the previous training step.
"""
import copy
from contextlib import contextmanager

import torch
from mmengine.dist import all_reduce
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdp.structure import Structure, StructureChoice

from .resize import resize_batch
from .subnet import subnetwork

_STATE_PREFIX = 'memory_'
_STATE_NAMES = ('_slots', )


def _stream_state(model: nn.Module) -> list:
    """(module, name, value) of the streaming state: `_slots` and every `memory_*` attribute
    that is not a parameter, buffer or submodule."""
    state = []
    for module in model.modules():
        for name, value in vars(module).items():
            if name.startswith(_STATE_PREFIX) or name in _STATE_NAMES:
                state.append((module, name, value.clone() if torch.is_tensor(value)
                              else copy.deepcopy(value)))
    return state


@contextmanager
def preserved_stream_state(model: nn.Module):
    state = _stream_state(model)
    try:
        yield
    finally:
        for module, name, value in state:
            setattr(module, name, value)


@contextmanager
def bn_eval(model: nn.Module):
    flags = [(m, m.training) for m in model.modules() if isinstance(m, _BatchNorm)]
    for m, _ in flags:
        m.training = False
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class SubnetLoss:
    """`loss(choice, size)`: the total training loss (the sum `parse_losses` makes) of the
    sub-network `choice` of `model` on the batch resized to `size`, averaged over processes.

    `inputs` and `data_samples` come from the model's data preprocessor; every process must
    ask for the same sequence of sub-networks (the all-reduce pairs them up).
    """

    def __init__(self, model: nn.Module, structure: Structure, inputs: dict, data_samples: list,
                 seed: int):
        self.model, self.structure = model, structure
        self.inputs, self.data_samples, self.seed = inputs, data_samples, int(seed)
        self.imgs = inputs['imgs']

    def __call__(self, choice: StructureChoice, size) -> float:
        imgs, samples = resize_batch(self.imgs, self.data_samples, size)
        inputs = {**self.inputs, 'imgs': imgs}
        devices = [imgs.device] if imgs.device.type == 'cuda' else []
        with torch.no_grad(), preserved_stream_state(self.model), bn_eval(self.model), \
                torch.random.fork_rng(devices=devices), \
                subnetwork(self.model, self.structure, choice):
            torch.manual_seed(self.seed)
            loss, _ = self.model.parse_losses(self.model.loss(inputs, samples))
        loss = loss.detach().float().reshape(1)
        all_reduce(loss, op='mean')
        return float(loss)
