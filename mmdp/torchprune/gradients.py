"""The window mean of the conv weight gradients that Torch-Pruning's Taylor importance reads.

`tp.importance.GroupTaylorImportance` scores a channel by |w * dL/dw| summed over the weights
of every conv of its group (the producing convs' filters, the reading convs' input columns);
it reads `weight.grad`. MMEngine's OptimWrapper runs backward, step and zero_grad inside one
`train_step`, so no gradient is left at the pruning event: the gradients are read while backward
runs (tensor hooks, as `TaylorSaliency` reads the BN's) over the SaliencyHook's window, and their
mean is given to Torch-Pruning, which is its documented use (gradients accumulated over several
batches before the importance is computed).

With a loss scaler the gradients are divided by its scale; an iteration whose gradients are not
finite on some rank is left out on every rank. Each iteration's gradients are averaged over the
ranks (one all-reduce of the backbone's conv weights per iteration of the window), so every rank
holds the same sums and a checkpoint written by rank 0 is complete. A frozen conv weight gets
`requires_grad` for the window and its gradient is dropped once read, so it is not trained.
"""
import torch
from mmengine import dist
from torch import nn

STATISTIC = 'sum of per-iteration conv weight gradients, averaged over ranks'


def _drop_grad(param: torch.Tensor) -> None:
    param.grad = None


class WeightGradients:
    """Collects the gradients of the weights of the convs at `names` (module paths in `model`).

    Use: `start()`, then per iteration `begin_iteration(loss_scale)` before the forward and
    `end_iteration()` after the backward; `average()` gives {name: mean gradient (the weight's
    shape, float32, on the weight's device)}.
    """

    def __init__(self, model: nn.Module, names: list):
        self.params = {}
        for name in names:
            module = model.get_submodule(name)
            if not isinstance(module, nn.Conv2d):
                raise ValueError(f'{name} is a {type(module).__name__}, not a Conv2d')
            self.params[name] = module.weight
        self.shapes = {name: tuple(p.shape) for name, p in self.params.items()}
        sizes = [p.numel() for p in self.params.values()]
        self.offsets = dict(zip(self.params, torch.tensor([0] + sizes).cumsum(0).tolist()))
        device = next(iter(self.params.values())).device
        self.sums = torch.zeros(sum(sizes), dtype=torch.float64, device=device)
        self.count = 0.0
        self._buffer = torch.zeros(sum(sizes), dtype=torch.float32, device=device)
        self._scale = None
        self._handles, self._unfrozen = [], []

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def _view(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        start = self.offsets[name]
        return tensor[start:start + self.params[name].numel()]

    def start(self) -> None:
        if self.active:
            return
        for name, param in self.params.items():
            if not param.requires_grad:
                param.requires_grad_(True)
                self._unfrozen.append(param)
                self._handles.append(param.register_post_accumulate_grad_hook(_drop_grad))
            self._handles.append(param.register_hook(self._reader(name)))

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        for param in self._unfrozen:
            param.requires_grad_(False)
            param.grad = None
        self._handles, self._unfrozen, self._scale = [], [], None

    def _reader(self, name: str):
        view = self._view(name, self._buffer)

        def read(grad: torch.Tensor) -> None:
            if self._scale is not None:  # only inside begin/end_iteration
                view.add_(grad.detach().flatten().float())
        return read

    def begin_iteration(self, loss_scale: float = 1.0) -> None:
        """`loss_scale`: the factor the loss is multiplied by before backward (AMP)."""
        self._buffer.zero_()
        self._scale = float(loss_scale)

    def end_iteration(self) -> bool:
        """Add this iteration's gradients, averaged over the ranks; returns False, adding
        nothing, when they are not finite on this rank or another. Every rank must call it."""
        if self._scale is None:
            raise RuntimeError('end_iteration() without begin_iteration()')
        scale, self._scale = self._scale, None
        bad = self._buffer.new_tensor([float(not torch.isfinite(self._buffer).all())])
        dist.all_reduce(bad)
        if bad.item() > 0:
            return False
        dist.all_reduce(self._buffer)
        self.sums += self._buffer.double() / (scale * dist.get_world_size())
        self.count += 1
        return True

    def average(self) -> dict:
        if self.count == 0:
            raise RuntimeError('no finite conv weight gradients were collected: the saliency '
                               'window held no iteration, or every one overflowed')
        mean = (self.sums / self.count).float()
        return {name: self._view(name, mean).view(self.shapes[name]) for name in self.params}

    def reset(self) -> None:
        self.sums.zero_()
        self.count = 0.0

    def state_dict(self) -> dict:
        return {'shapes': {n: list(s) for n, s in self.shapes.items()}, 'statistic': STATISTIC,
                'sums': self.sums.cpu(), 'count': self.count}

    def load_state_dict(self, state: dict) -> None:
        shapes = {n: tuple(s) for n, s in state['shapes'].items()}
        if shapes != self.shapes or state.get('statistic') != STATISTIC:
            raise ValueError('the conv gradient state of the checkpoint was collected on other '
                             'layers (or is another statistic) than this model\'s prunable '
                             'convs')
        self.sums.copy_(state['sums'].to(self.sums))
        self.count = float(state['count'])
