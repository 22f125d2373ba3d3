"""First-order Taylor saliency of every prunable channel, read on the BN after its conv:
s = gamma * dL/dgamma + beta * dL/dbeta per channel, averaged over the iterations collected.

The gradients are read while backward runs (tensor hooks on gamma and beta), because MMEngine's
OptimWrapper does backward, step and zero_grad inside one `train_step`: nothing is left to read
after it. An iteration whose saliency is not finite (a mixed-precision overflow) is left out;
with a loss scaler the gradients are divided by its scale. Each iteration's sum and count are
all-reduced, so every rank holds the same totals and a checkpoint written by rank 0 is complete.
"""
import torch
from mmengine import dist
from torch import nn

from mmdp.structure import Structure


def _drop_grad(param: torch.Tensor) -> None:
    param.grad = None


class TaylorSaliency:
    """Collects the saliency of the output channels of `structure`'s layers in `model`.

    Use: `start()`, then per iteration `begin_iteration(loss_scale)` before the forward and
    `end_iteration()` after the backward; `average()` gives {layer name: (channels,) float64}.
    """

    def __init__(self, model: nn.Module, structure: Structure):
        self.bns = {layer.name: model.get_submodule(layer.bn) for layer in structure.layers}
        sizes = [bn.num_features for bn in self.bns.values()]
        self.offsets = dict(zip(self.bns, torch.tensor([0] + sizes).cumsum(0).tolist()))
        self.sizes = dict(zip(self.bns, sizes))
        device = next(iter(self.bns.values())).weight.device
        self.sums = torch.zeros(sum(sizes), dtype=torch.float64, device=device)
        self.count = 0.0  # finite (rank, iteration) contributions in `sums`
        self._buffer = torch.zeros(sum(sizes), dtype=torch.float32, device=device)
        self._scale = None
        self._handles = []
        self._unfrozen = []

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def start(self) -> None:
        """Hook gamma and beta of every BN. A frozen BN (requires_grad=False, as StreamPETR's)
        gets requires_grad for the window, and its gradient is dropped as soon as it is read: the
        optimizer must not train it (an optimizer skips a parameter without gradient, and
        mmengine leaves frozen ones out of it anyway, so nothing would zero that gradient
        between iterations either)."""
        if self.active:
            return
        for name, bn in self.bns.items():
            for param in (bn.weight, bn.bias):
                if not param.requires_grad:
                    param.requires_grad_(True)
                    self._unfrozen.append(param)
                    self._handles.append(param.register_post_accumulate_grad_hook(_drop_grad))
                self._handles.append(param.register_hook(self._reader(name, param)))

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        for param in self._unfrozen:
            param.requires_grad_(False)
            param.grad = None
        self._handles, self._unfrozen, self._scale = [], [], None

    def _reader(self, name: str, param: torch.Tensor):
        view = self._buffer[self.offsets[name]:self.offsets[name] + self.sizes[name]]

        def read(grad: torch.Tensor) -> None:
            if self._scale is not None:  # only inside begin/end_iteration
                view.add_(param.detach().float() * grad.float())
        return read

    def begin_iteration(self, loss_scale: float = 1.0) -> None:
        """`loss_scale`: the factor the loss is multiplied by before backward (AMP)."""
        self._buffer.zero_()
        self._scale = float(loss_scale)

    def end_iteration(self) -> bool:
        """Add this iteration to the totals (all ranks' finite contributions); returns whether
        this rank's saliency was finite."""
        if self._scale is None:
            raise RuntimeError('end_iteration() without begin_iteration()')
        saliency = self._buffer.double() / self._scale
        finite = bool(torch.isfinite(saliency).all())
        packed = torch.cat([saliency if finite else torch.zeros_like(saliency),
                            saliency.new_tensor([float(finite)])])
        dist.all_reduce(packed)
        self.sums += packed[:-1]
        self.count += float(packed[-1])
        self._scale = None
        return finite

    def average(self) -> dict:
        """{layer name: mean saliency per output channel (float64, CPU)}."""
        if self.count == 0:
            raise RuntimeError('no finite saliency was collected: the window held no iteration, '
                               'or every one overflowed')
        mean = (self.sums / self.count).cpu()
        return {name: mean[start:start + self.sizes[name]]
                for name, start in self.offsets.items()}

    def reset(self) -> None:
        self.sums.zero_()
        self.count = 0.0

    def state_dict(self) -> dict:
        return {'layers': dict(self.sizes), 'sums': self.sums.cpu(), 'count': self.count}

    def load_state_dict(self, state: dict) -> None:
        if dict(state['layers']) != self.sizes:
            raise ValueError('saliency state of a checkpoint was collected on other layers than '
                             "this model's prunable ones")
        self.sums.copy_(state['sums'].to(self.sums))
        self.count = float(state['count'])
