"""First-order Taylor saliency of every prunable channel, read on the BN after its conv, as the
official MDP and HALP code compute it.

Per iteration and channel, s = gamma * dL/dgamma + beta * dL/dbeta on each layer's BN. A
channel group's score that iteration is |sum of s over the group's layers| (layers coupled by a
residual add are pruned together, so their terms add before the magnitude is taken); each layer
gets the share |s_l| / sum_l |s_l| of it (zero where every |s_l| is zero), so that the layers'
values add up to the group's. A lone layer's value is |s|. The window's value of a layer is the
mean of these per-iteration values (NVlabs/MDP prune/pruning.py, update_neuron_metric_mdp;
NVlabs/HALP prune/importance.py, which keeps the group score only).

The head's units (MLP hidden units, attention heads; `Structure.valued_parts`) have no BN: each
gets a multiplicative gate g = 1 on the input of the Linear that reads it (the FFN's second
Linear, out_proj), and its s is the first-order Taylor term dL/dg = sum over the unit's
features and tokens of x * dL/dx. Each unit is its own group, so its value is |s| per
iteration and then the window mean, the same statistic as a channel's.

A token setting's units (mmdp/structure/head.py) are gated where the decoder reads them: a
learnable query's gate multiplies its row of the decoder's query content and query position
(a learnable query has no content of its own: the row is its reference point's embedding),
a propagated query's the same rows, and an older memory slot's its row of the memory keys and
their positions; s = sum over the row's features of x * dL/dx, over both inputs.

The gradients are read while backward runs (tensor hooks on gamma and beta), because MMEngine's
OptimWrapper does backward, step and zero_grad inside one `train_step`: nothing is left to read
after it. With a loss scaler the gradients are divided by its scale. Under DDP each rank reads
its local gradients; s is averaged over the ranks before the magnitudes are taken, which is the
s of the averaged gradient the official code reads after DDP's all-reduce. An iteration whose s
is not finite on some rank (a mixed-precision overflow) is left out on every rank, so every
rank holds the same totals and a checkpoint written by rank 0 is complete.
"""
import torch
from mmengine import dist
from torch import nn

from mmdp.structure import Structure
from mmdp.structure.head import TOKENS

# What `sums` accumulates; a checkpoint holding another statistic is refused.
STATISTIC = 'mean of per-iteration |sum_l s| shared by |s_l|'


def _drop_grad(param: torch.Tensor) -> None:
    param.grad = None


class TaylorSaliency:
    """Collects the saliency of the output channels of `structure`'s layers in `model`.

    Use: `start()`, then per iteration `begin_iteration(loss_scale)` before the forward and
    `end_iteration()` after the backward; `average()` gives {layer name: (channels,) float64},
    the window mean of each layer's share of its group's score (see the module doc).
    """

    def __init__(self, model: nn.Module, structure: Structure):
        self.bns = {layer.name: model.get_submodule(layer.bn) for layer in structure.layers}
        self.gates = {part.name: (model.get_submodule(part.gate), part)
                      for part in structure.valued_parts}
        self.heads = {part.name: model.get_submodule(part.modules[0])
                      for part in structure.valued_parts if part.kind == TOKENS}
        sizes = ([bn.num_features for bn in self.bns.values()]
                 + [part.units for _, part in self.gates.values()])
        names = list(self.bns) + list(self.gates)
        self.offsets = dict(zip(names, torch.tensor([0] + sizes).cumsum(0).tolist()))
        self.sizes = dict(zip(names, sizes))
        device = next(iter(self.bns.values())).weight.device
        # Per group, the positions of its layers' channels in the flat buffer: (layers, C).
        members = {}
        for layer in list(structure.layers) + structure.valued_parts:
            members.setdefault(layer.group, []).append(layer.name)
        self._groups = [torch.stack([torch.arange(self.offsets[n], self.offsets[n] + self.sizes[n],
                                                  device=device) for n in names])
                        for names in members.values()]
        self.sums = torch.zeros(sum(sizes), dtype=torch.float64, device=device)
        self.count = 0.0  # iterations in `sums`
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
        for name, (module, part) in self.gates.items():
            reader = (self._token_reader(name, part, self.heads[name]) if part.kind == TOKENS
                      else self._gate_reader(name, part))
            self._handles.append(module.register_forward_pre_hook(reader))

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

    def _gate_reader(self, name: str, part):
        view = self._buffer[self.offsets[name]:self.offsets[name] + self.sizes[name]]

        def watch(module, args) -> None:
            x = args[0]
            if self._scale is None or not x.requires_grad:
                return

            def read(grad: torch.Tensor) -> None:
                s = (x.detach().float() * grad.float()).reshape(-1, part.units, part.unit)
                view.add_(s.sum((0, 2)))
            x.register_hook(read)
        return watch

    def _token_reader(self, name: str, part, head: nn.Module):
        """Gates of a token setting's units on the decoder's inputs (query, query_pos, ...,
        temp_memory, temp_pos): unit i < num_query is learnable query i, unit num_query + j
        memory slot j (the propagated queries are slots 0 .. num_propagated - 1)."""
        view = self._buffer[self.offsets[name]:self.offsets[name] + self.sizes[name]]
        full = part.settings[-1][0]

        def watch(module, args) -> None:
            if self._scale is None:
                return
            query, query_pos, temp_memory, temp_pos = args[0], args[1], args[4], args[5]
            p = head.num_propagated
            learnable = (torch.arange(full) if head.query_index is None
                         else head.query_index.cpu())
            rows = torch.cat([learnable, full + torch.arange(p)]).to(view.device)
            pad = query.size(1) - len(rows)  # the denoising queries come first
            slots = full + p + torch.arange(0 if temp_memory is None else temp_memory.size(1),
                                            device=view.device)
            for x, units, start in ((query, rows, pad), (query_pos, rows, pad),
                                    (temp_memory, slots, 0), (temp_pos, slots, 0)):
                if x is None or not x.requires_grad:
                    continue

                def read(grad, x=x, units=units, start=start) -> None:
                    s = (x.detach().float() * grad.float())[:, start:].sum((0, 2))
                    view.index_add_(0, units, s.to(view))
                x.register_hook(read)
        return watch

    def begin_iteration(self, loss_scale: float = 1.0) -> None:
        """`loss_scale`: the factor the loss is multiplied by before backward (AMP)."""
        self._buffer.zero_()
        self._scale = float(loss_scale)

    def end_iteration(self) -> bool:
        """Add this iteration to the totals (see `add`); returns whether it was added."""
        if self._scale is None:
            raise RuntimeError('end_iteration() without begin_iteration()')
        scale, self._scale = self._scale, None
        return self.add(self._buffer.double() / scale)

    def add(self, s: torch.Tensor) -> bool:
        """Add one iteration's s (this rank's, flat in layer order, as `state_dict` lays out
        `sums`): averaged over the ranks, turned into per-layer values, summed into the totals.
        Every rank must call it; returns False, adding nothing, when s is not finite on this
        rank or another."""
        s = s.to(self.sums)
        finite = bool(torch.isfinite(s).all())
        packed = torch.cat([s if finite else torch.zeros_like(s), s.new_tensor([float(not finite)])])
        dist.all_reduce(packed)
        if packed[-1] > 0:
            return False
        self.sums += self.values(packed[:-1] / dist.get_world_size())
        self.count += 1
        return True

    def values(self, s: torch.Tensor) -> torch.Tensor:
        """One iteration's per-layer values from its flat s (see the module doc)."""
        out = torch.zeros_like(s)
        for index in self._groups:
            terms = s[index]  # (layers, C)
            magnitude = terms.abs()
            # Where every |s_l| is zero the share is 0 / tiny = 0.
            share = magnitude / magnitude.sum(0).clamp_min(torch.finfo(s.dtype).tiny)
            out[index] = terms.sum(0).abs() * share
        return out

    def average(self) -> dict:
        """{layer name: window mean of its per-iteration values (float64, CPU)}."""
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
        return {'layers': dict(self.sizes), 'statistic': STATISTIC, 'sums': self.sums.cpu(),
                'count': self.count}

    def load_state_dict(self, state: dict) -> None:
        if dict(state['layers']) != self.sizes:
            raise ValueError('saliency state of a checkpoint was collected on other layers than '
                             "this model's prunable ones")
        if state.get('statistic') != STATISTIC:
            raise ValueError('saliency state of a checkpoint holds sums of another statistic '
                             f"({state.get('statistic') or 'the mean of s, before |.|'}), not "
                             f'the {STATISTIC}: resume from a checkpoint taken before the '
                             'saliency window, or collect the window again')
        self.sums.copy_(state['sums'].to(self.sums))
        self.count = float(state['count'])
