"""TorchPruningHook: the Torch-Pruning baseline on the pruning pipeline of MDP and HALP.

It is a `PruningHook` whose event decides with Torch-Pruning instead of a solver: the conv
weight gradients of the SaliencyHook's window (`WeightGradients`) are given to a deep copy of the
backbone and neck, Torch-Pruning's global Taylor pruning (`decision.tp_choice`, `round_to` the
run's chunk) is searched for the smallest ratio whose latency, under the run's latency model and
table, fits the budget (`decision.find_ratio`), and its pruned channels become the run's
structure choice. Masking, fine-tuning, checkpoints, resume, the event files and export are
those of `PruningHook`. The event writes the problem of mmdp's saliency (as MDP's event does, so
`tools/solve.py` can compare), a solution with the chosen widths, kept channels and ratio, and a
summary that adds the ratio, the search and the kept importance under mmdp's saliency.
"""
import time
from importlib.metadata import version
from typing import Optional, Union

import torch
from mmdet3d.registry import HOOKS

from mmdp.cli import RunError
from mmdp.fileio import atomic_write_json
from mmdp.hooks import PruningHook
from mmdp.hooks.runner_utils import bare_model
from mmdp.pruning.event import build_problem, summarize
from mmdp.solvers import Solution
from mmdp.structure import StructureChoice

from .decision import PruningView, find_ratio, torch_pruning, tp_choice
from .gradients import WeightGradients

CHECKPOINT_KEY = 'torch_pruning_gradients'


def kept_importance(structure, saliency: dict, choice: StructureChoice) -> float:
    """The sum of mmdp's saliency over the kept channels of every kept layer (MDP's objective
    for the channels MDP would keep)."""
    return float(sum(torch.as_tensor(saliency[layer.name], dtype=torch.float64)[
        choice.kept(structure, layer.group)].sum() for layer in structure.layers
        if layer.block not in choice.removed_blocks))


@HOOKS.register_module()
class TorchPruningHook(PruningHook):
    """Prune the backbone once, before iteration `at_iter`, with Torch-Pruning's MetaPruner
    (global pruning, `GroupTaylorImportance(**importance)`, `round_to=chunk`) at the smallest
    ratio whose predicted latency is at most (1 - prune_ratio) x the dense latency.

    `ratio_grid`, `ratio_tol`: the search (`decision.find_ratio`). The other arguments are
    `PruningHook`'s. Needs a SaliencyHook: its window is where the gradients are collected, and
    its saliency is what the kept importance is measured in.
    """

    def __init__(self, latency_table: str, prune_ratio: float, at_iter: int,
                 chunk: Optional[int] = None,
                 latency_model: Union[str, dict] = 'lut_bilinear',
                 importance: Optional[dict] = None, ratio_grid: float = 0.05,
                 ratio_tol: float = 1e-4, latency_device: Optional[str] = None,
                 latency_dtype: str = 'fp32', latency_runtime: str = 'torch',
                 out_dir: str = 'pruning'):
        self.tp = torch_pruning()
        if not 0 < ratio_tol <= ratio_grid < 1:
            raise ValueError(f'TorchPruningHook: need 0 < ratio_tol <= ratio_grid < 1, found '
                             f'ratio_grid={ratio_grid}, ratio_tol={ratio_tol}')
        super().__init__(latency_table, prune_ratio, at_iter, chunk=chunk,
                         latency_model=latency_model, latency_device=latency_device,
                         latency_dtype=latency_dtype, latency_runtime=latency_runtime,
                         out_dir=out_dir)
        self.importance_cfg = dict(importance or {})
        self.tp.importance.GroupTaylorImportance(**self.importance_cfg)  # a bad key fails now
        self.ratio_grid, self.ratio_tol = float(ratio_grid), float(ratio_tol)
        self.gradients, self._restored = None, None

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self.structure.parts:
            raise ValueError('TorchPruningHook prunes the backbone (and the neck\'s inputs) '
                             'only: unset prunable_head')
        names = [layer.name for layer in self.structure.layers] + [
            consumer.name for consumer in self.structure.consumers]
        self.gradients = WeightGradients(bare_model(runner), names)
        if self._restored is not None:
            self.gradients.load_state_dict(self._restored)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        super().after_load_checkpoint(runner, checkpoint)
        self._restored = checkpoint.get(CHECKPOINT_KEY)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        super().before_save_checkpoint(runner, checkpoint)
        if not self.state.pruned:  # needed only until the event
            checkpoint[CHECKPOINT_KEY] = self.gradients.state_dict()

    def _collecting(self, runner) -> bool:
        return (not self.state.pruned
                and self.saliency.begin <= runner.iter < self.saliency.end)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        super().before_train_iter(runner, batch_idx, data_batch)
        if self._collecting(runner):
            self.gradients.start()
            scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
            self.gradients.begin_iteration(1.0 if scaler is None else scaler.get_scale())
        else:
            self.gradients.stop()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self._collecting(runner):
            return
        if not self.gradients.end_iteration():
            runner.logger.warning(f'conv gradients of iteration {runner.iter} are not finite '
                                  '(on this rank or another): left out of the mean')

    def after_train(self, runner) -> None:
        super().after_train(runner)
        self.gradients.stop()

    def _prune(self, runner) -> None:
        super()._prune(runner)
        self.gradients.stop()
        self.gradients.reset()

    def _decide(self, runner, event: int) -> dict:
        """Rank 0: search Torch-Pruning's ratio, write the event files, return the choice."""
        start = time.perf_counter()
        current = self.state.choice()
        budget = self.dense_ms * (1 - self.prune_ratio)
        saliency = self.saliency.collector.average()
        model = self._latency_model(current)
        problem, _ = build_problem(model, self.structure, saliency, current, budget, self.chunk)
        view = PruningView(bare_model(runner), self.structure)
        view.set_gradients(self.gradients.average())

        def decide(ratio: float, prune: bool = False) -> StructureChoice:
            return tp_choice(view, self.structure, ratio, self.chunk, self.importance_cfg,
                             prune=prune)
        try:
            ratio, evaluations = find_ratio(lambda r: model.predict(decide(r)), budget,
                                            self.ratio_grid, self.ratio_tol)
        except ValueError as e:
            raise RunError(f'{e} (prune_ratio {self.prune_ratio}, {self.chunk}-channel '
                           f'round_to)') from None
        choice = decide(ratio, prune=True)  # Torch-Pruning prunes its copy: the decision
        widths = choice.all_widths(self.structure)
        _, problem_latency = problem.evaluate(widths, [])
        kept = kept_importance(self.structure, saliency, choice)
        seconds = time.perf_counter() - start
        solution = Solution('feasible', kept, problem_latency, widths, [], None, seconds)
        stem = f'{runner.work_dir}/{self.out_dir}/event{event}_iter{runner.iter}'
        self._keep_aside_if_different(runner, stem, solution)
        problem.save(f'{stem}_problem.json')
        atomic_write_json(f'{stem}_solution.json', {
            **solution.to_dict(), 'channels': choice.channels, 'pruning_ratio': ratio})
        # The distribution's version: torch_pruning.__version__ of 1.6.1 still says 1.6.0.
        solver = {'type': 'torch-pruning', 'version': version('torch-pruning'),
                  'pruner': 'MetaPruner', 'global_pruning': True, 'round_to': self.chunk,
                  'importance': {'type': 'GroupTaylorImportance', **self.importance_cfg}}
        summary = summarize(
            self.structure, current, choice, self.reference, iteration=runner.iter, event=event,
            events=1, budget_ms=budget, dense_ms=self.dense_ms,
            latency_model=self.latency_cfg['type'], solver=solver, status=solution.status,
            gap=None, seconds=seconds, objective=kept, problem_latency_ms=problem_latency,
            saliency_contributions=self.saliency.collector.count,
            gradient_contributions=self.gradients.count, pruning_ratio=ratio,
            ratio_search=evaluations,
            kept_importance={'channels': kept,
                             'dense': kept_importance(self.structure, saliency, current),
                             'saliency_order': problem.evaluate(widths, [])[0]})
        atomic_write_json(f'{stem}_summary.json', summary)
        runner.logger.info(f'Torch-Pruning: ratio {ratio:.6g} after {len(evaluations)} '
                           f'evaluations, predicted {problem_latency:.6g} ms for the budget '
                           f'{budget:.6g} ms')
        return {'widths': choice.widths, 'removed_blocks': [], 'channels': choice.channels,
                'summary': summary}
