"""JointPruningHook: search width, depth and camera image size by numerical gradients inside a
training run, then fix the sub-network and fine-tune it. With the config's `prunable_head` the
search covers the whole detector: the head's dimensions join the vector (`space`) and the
latency is the whole detector's at every ladder size (`latency`).

Iterations [search_begin, search_end) of the run are the search: every `interval` iterations,
before the training step, one estimator step evaluates perturbed sub-networks of the current
pruning vector on the step's batch (sharing the dense weights, see `subnet` and `evaluate`) and
moves the vector within the latency budget. Between search steps the dense weights train as
usual: the sub-networks borrow the weights of the dense model that every other method prunes,
the importance order stays meaningful, and the search does not tilt the weights towards the
vectors it happened to visit first. After iteration search_end - 1 the vector is rounded, the
sub-network is written as a solution JSON (`widths`, `removed_blocks`, `channels`, `img_size`)
with a config at its image size, masked into the model with the masks of the MDP/HALP hooks
(`mmdp.pruning.PruningMasks`: dense-shaped, gradients and optimizer state masked too), and the
rest of the run fine-tunes it; batches are resized to the chosen image size inside the hook.

Files in the work directory: `jointprune_trajectory.jsonl` (one line per search step),
`jointprune_trajectory.png`, `jointprune_solution.json`, `jointprune_final_config.py`.
Checkpoints carry the hook's state under `jointprune` (importance order, estimator, trajectory,
fixed sub-network), so a resumed run goes on, and, once fixed, the shared `pruning` state, so
`tools/export_pruned.py` turns them into a physically smaller model.
"""
import json
import os.path as osp
import time
from typing import Optional

import numpy as np
from mmdet3d.registry import HOOKS
from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from mmdp.fileio import atomic_write, atomic_write_json
from mmdp.hooks import SaliencyHook
from mmdp.hooks.runner_utils import bare_model, runner_optimizers
from mmdp.pruning import CHECKPOINT_KEY as PRUNING_KEY
from mmdp.pruning import PruningMasks, PruningState
from mmdp.structure import StructureChoice, derive_structure

from .estimator import SelfAdaptedGradient
from .evaluate import SubnetLoss
from .final_config import dump_config, final_size_config
from .latency import build_sized_latency, table_step
from .plot import plot_trajectory
from .projection import LatencyProjection
from .ranking import bn_gamma_ranking, taylor_ranking
from .resize import resize_data_batch_
from .space import PruningSpace, Ranking

STATE_KEY = 'jointprune'
STATE_VERSION = 1
IMPORTANCE = ('taylor', 'bn_gamma')
TRAJECTORY = 'jointprune_trajectory.jsonl'
PLOT = 'jointprune_trajectory.png'
SOLUTION = 'jointprune_solution.json'
FINAL_CONFIG = 'jointprune_final_config.py'


@HOOKS.register_module()
class JointPruningHook(Hook):
    """See the module doc. Arguments:

    prune_ratio: the budget is (1 - prune_ratio) x the predicted dense latency at full size.
    latency: the latency model (`mmdp.jointprune.latency.build_sized_latency`).
    search_end: the sub-network is fixed after the training step of iteration search_end - 1
        (0: before training); search steps run before the training steps of iterations
        search_begin, search_begin + interval, ... below search_end.
    importance: the order channels and blocks are taken in (`ranking`): 'taylor' (the saliency
        of a SaliencyHook whose window ends by search_begin) or 'bn_gamma'.
    ladder: camera image sizes (H, W), the full size (the config's) first, then smaller ones.
    chunk, min_width, min_depth, prune_residual, head_chunk, min_layers: the pruning vector
        (`space.PruningSpace`). With the config's `prunable_head` the vector has the head's
        coordinates too (its hidden widths, heads, decoder depth and token setting, ranked by
        the Taylor saliency of the head's units) and the latency covers the whole detector at
        every ladder size (one whole-detector table per size); head_chunk=None takes the step
        of the full-size table, so every hidden width the search visits is a profiled one.
    pairs, step, sigma, grow, step_range, sigma_range, seed: the estimator
        (`estimator.SelfAdaptedGradient`).
    input_shape: the backbone input the structure and tables are taken at; default the
        config's `latency_input_shape`.
    """
    priority = 'NORMAL'  # before the CheckpointHook (VERY_LOW) in after_train_iter

    def __init__(self, prune_ratio: float, latency: dict, search_end: int,
                 search_begin: int = 0, interval: int = 1, importance: str = 'taylor',
                 ladder: Optional[list] = None, chunk: int = 32, min_width: float = 0.25,
                 min_depth: int = 1, prune_residual: bool = False,
                 head_chunk: Optional[int] = None, min_layers: int = 1, pairs: int = 2,
                 step: float = 0.1, sigma: float = 0.15, grow: float = 1.5,
                 step_range=(0.01, 0.5), sigma_range=(0.05, 0.5), seed: int = 0,
                 input_shape=None):
        if not 0 < prune_ratio < 1:
            raise ValueError(f'prune_ratio must lie in (0, 1), found {prune_ratio}')
        if not 0 <= search_begin <= search_end:
            raise ValueError(f'need 0 <= search_begin ({search_begin}) <= search_end '
                             f'({search_end})')
        if interval < 1:
            raise ValueError(f'interval must be >= 1 iteration, found {interval}')
        if importance not in IMPORTANCE:
            raise ValueError(f'importance {importance!r} is not one of {IMPORTANCE}')
        self.prune_ratio, self.latency_cfg = float(prune_ratio), dict(latency)
        self.search_begin, self.search_end, self.interval = search_begin, search_end, interval
        self.importance, self.ladder, self.input_shape = importance, ladder, input_shape
        self.space_args = dict(chunk=chunk, min_width=min_width, min_depth=min_depth,
                               prune_residual=prune_residual, head_chunk=head_chunk,
                               min_layers=min_layers)
        self.estimator_args = dict(pairs=pairs, step=step, sigma=sigma, grow=grow,
                                   step_range=tuple(step_range), sigma_range=tuple(sigma_range),
                                   seed=seed)
        self.seed = int(seed)
        self.structure = self.space = self.latency = None
        self.ranking = self.projection = self.estimator = None
        self.fixed = None  # the fixed sub-network, a dict (see _fix)
        self.trajectory, self.search_seconds = [], 0.0
        self._restored = {}
        self._grad_hooks = []
        self._latency_cache = {}

    # ------------------------------------------------------------------ set-up
    def before_run(self, runner) -> None:
        model = bare_model(runner)
        shape = self.input_shape or runner.cfg.get('latency_input_shape')
        if shape is None:
            raise ValueError('JointPruningHook needs the backbone input shape: set '
                             'latency_input_shape in the config or input_shape in the hook')
        shape = tuple(int(s) for s in shape)
        head = runner.cfg.get('prunable_head')
        if head and self.importance != 'taylor':
            raise ValueError(f"JointPruningHook importance={self.importance!r}: a whole-detector "
                             "run (prunable_head) ranks the head's units by their Taylor "
                             "saliency; use importance='taylor' with a SaliencyHook")
        self.structure = derive_structure(model, shape, head=head)
        full = shape[2:]
        ladder = [tuple(s) for s in (self.ladder or [full])]
        if ladder[0] != full:
            raise ValueError(f'the first ladder size {ladder[0]} must be the full image size '
                             f'{full} (latency_input_shape / input_shape)')
        divisor = int(getattr(model.data_preprocessor, 'pad_size_divisor', 1) or 1)
        args = dict(self.space_args)
        if head and args['head_chunk'] is None:
            args['head_chunk'] = table_step(self.latency_cfg, full)
        self.space = PruningSpace(self.structure, ladder, divisor=divisor, **args)

    def before_train(self, runner) -> None:
        if self.fixed is not None:  # resumed: the weights came masked, the hooks did not
            self._apply_fixed(runner)
            return
        if self.search_end > runner.max_iters:
            raise ValueError(f'JointPruningHook search_end={self.search_end} is beyond the '
                             f'run ({runner.max_iters} iterations)')
        if self.importance == 'taylor':
            self._saliency_hook(runner)  # fail now, not at the first search step
        self.latency = build_sized_latency(self.latency_cfg, self.structure,
                                           self.space.full_size, self.space.ladder)
        self.dense_latency = self.latency(StructureChoice(), self.space.full_size)
        self.budget = (1 - self.prune_ratio) * self.dense_latency
        runner.logger.info(
            f'JointPruning: {self.space.dim} coordinates {self.space.names}; dense latency '
            f'{self.dense_latency:.4g} {self.latency.unit}, budget {self.budget:.4g} '
            f'(prune ratio {self.prune_ratio}); image sizes {list(self.space.ladder)}'
            + ('; latency at other sizes = full-size prediction x pixel ratio'
               if self.latency.scaled_sizes and len(self.space.ladder) > 1 else ''))
        if runner.iter >= self.search_end:
            self._fix(runner)

    def _saliency_hook(self, runner) -> SaliencyHook:
        found = [h for h in runner.hooks if isinstance(h, SaliencyHook)]
        if not found or found[0].end > self.search_begin:
            raise ValueError(
                "JointPruningHook with importance='taylor' needs a SaliencyHook in custom_hooks "
                f'whose window ends by search_begin ({self.search_begin}); found '
                f"{[(h.begin, h.end) for h in found] or 'none'}; or use importance='bn_gamma'")
        return found[0]

    def _start_search(self, runner) -> None:
        """Importance order, projection and estimator, once the saliency window is over (or
        from the checkpoint a resumed run started from)."""
        if self._restored.get('ranking'):
            self.ranking = Ranking(**self._restored['ranking'])
        elif self.importance == 'taylor':
            saliency = self._saliency_hook(runner).collector.average()
            self.ranking = taylor_ranking(self.structure, saliency, self.space.block_stages)
        else:
            self.ranking = bn_gamma_ranking(bare_model(runner), self.structure,
                                            self.space.stages)
        self.projection = LatencyProjection(self.latency_of, self.budget, self.space.cells)
        self.estimator = SelfAdaptedGradient(self.projection(np.ones(self.space.dim)),
                                             **self.estimator_args)
        if self._restored.get('estimator'):
            self.estimator.load_state_dict(self._restored['estimator'])
        runner.logger.info(f'JointPruning starts at {self._describe(self.estimator.u)}')

    # ------------------------------------------------------------------ search
    def latency_of(self, u) -> float:
        setting = self.space.decode(u)
        if setting not in self._latency_cache:
            choice = self.space.to_choice(setting, self.ranking)
            self._latency_cache[setting] = self.latency(choice, setting.size)
        return self._latency_cache[setting]

    def _describe(self, u) -> str:
        return (f'{self.space.decode(u).summary(self.space)}, latency '
                f'{self.latency_of(u):.4g}/{self.budget:.4g} {self.latency.unit}')

    def _search_step(self, runner, data_batch) -> None:
        start = time.perf_counter()
        if self.estimator is None:
            self._start_search(runner)
        model = bare_model(runner)
        data = model.data_preprocessor(data_batch, True)
        batch_size = tuple(data['inputs']['imgs'].shape[-2:])
        if batch_size != self.space.full_size:
            raise ValueError(f'training images are {batch_size} but the full size of the '
                             f'ladder is {self.space.full_size}: the pipeline must produce '
                             'the full size during the search')
        est = self.estimator
        loss = SubnetLoss(model, self.structure, data['inputs'], data['data_samples'],
                          seed=self.seed * 1_000_003 + est.count)

        def evaluate(u):
            setting = self.space.decode(u)
            return loss(self.space.to_choice(setting, self.ranking), setting.size)

        record = est.step(evaluate, self.projection, key=self.space.decode,
                          normal=lambda u: self.projection.normal(u, est.sigma))
        seconds = time.perf_counter() - start
        self.search_seconds += seconds
        self.trajectory.append(dict(
            step=est.count, iter=runner.iter, names=self.space.names, vector=record.vector,
            setting=self.space.decode(record.vector).summary(self.space), loss=record.loss,
            latency=self.latency_of(record.vector), budget=self.budget,
            unit=self.latency.unit, candidate=record.candidate,
            candidate_loss=record.candidate_loss, outcome=record.outcome,
            step_size=record.step, sigma=record.sigma, grad_norm=record.grad_norm,
            evaluations=record.evaluations, seconds=seconds))
        if is_main_process():
            atomic_write(osp.join(runner.work_dir, TRAJECTORY), self._write_trajectory)
        runner.logger.info(
            f'JointPruning step {est.count}: loss {record.loss:.4f} at '
            f'{self._describe(record.vector)}; {record.outcome}, step {record.step:.3g}, '
            f'sigma {record.sigma:.3g}, {record.evaluations} evaluations, {seconds:.1f} s')

    def _write_trajectory(self, path: str) -> None:
        with open(path, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in self.trajectory)

    # ------------------------------------------------------------------ fix
    def _fix(self, runner) -> None:
        if self.estimator is None:
            self._start_search(runner)
        u = self.estimator.u
        setting = self.space.decode(u)
        choice = self.space.to_choice(setting, self.ranking)
        latency = self.latency_of(u)
        self.fixed = dict(
            widths=dict(choice.widths), removed_blocks=sorted(choice.removed_blocks),
            channels=choice.channels, img_size=list(setting.size), vector=u.tolist(),
            latency=latency, budget=self.budget, unit=self.latency.unit,
            iteration=runner.iter)
        if is_main_process():
            self._write_solution(runner, choice, setting)
        self._apply_fixed(runner)
        runner.logger.info(f'JointPruning fixed at iteration {runner.iter}: '
                           f'{self._describe(u)}; wrote {osp.join(runner.work_dir, SOLUTION)}')

    def _write_solution(self, runner, choice: StructureChoice, setting) -> None:
        u = self.estimator.u
        solution = dict(
            status='feasible',
            objective=self.trajectory[-1]['loss'] if self.trajectory else None,
            latency=self.fixed['latency'], widths=choice.all_widths(self.structure),
            removed_blocks=self.fixed['removed_blocks'], gap=None, seconds=self.search_seconds,
            img_size=list(setting.size), channels=choice.channels,
            meta=dict(method='jointprune', objective='search loss (lower is better)',
                      budget=self.budget, dense_latency=self.dense_latency,
                      unit=self.latency.unit, latency_model=self.latency_cfg,
                      scaled_sizes=self.latency.scaled_sizes, importance=self.importance,
                      names=self.space.names, vector=u.tolist(),
                      setting=setting.summary(self.space), steps=self.estimator.count,
                      iteration=runner.iter))
        atomic_write_json(osp.join(runner.work_dir, SOLUTION), solution)
        dump_config(self._final_config(runner.cfg, setting.size),
                    osp.join(runner.work_dir, FINAL_CONFIG))
        if self.trajectory:
            plot_trajectory(self.trajectory, osp.join(runner.work_dir, PLOT))

    def _final_config(self, cfg, size):
        """The run's config at `size`; this hook keeps the full input shape, which names the
        structure its checkpoint state was made for."""
        final = final_size_config(cfg, size, self.space.full_size)
        for hook in final.get('custom_hooks', []):
            if str(hook.get('type', '')).split('.')[-1] == type(self).__name__:
                hook['input_shape'] = list(self.structure.input_shape)
                hook['head_chunk'] = self.space.head_chunk  # no table needed to rebuild it
        return final

    def _fixed_choice(self) -> StructureChoice:
        return StructureChoice(self.fixed['widths'], self.fixed['removed_blocks'],
                               self.fixed['channels'])

    def _apply_fixed(self, runner) -> None:
        """Mask the model, its optimizer state and (through hooks) its gradients."""
        masks = PruningMasks(self.structure, self._fixed_choice())
        self._remove_grad_hooks()
        self._grad_hooks = masks.enforce_(bare_model(runner), runner_optimizers(runner))

    def _remove_grad_hooks(self) -> None:
        for handle in self._grad_hooks:
            handle.remove()
        self._grad_hooks = []

    # ------------------------------------------------------------------ iterations
    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if (self.fixed is None and runner.iter >= self.search_begin
                and (runner.iter - self.search_begin) % self.interval == 0):
            self._search_step(runner, data_batch)
        self._resize(data_batch)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.fixed is None and runner.iter + 1 >= self.search_end:
            self._fix(runner)

    def after_train(self, runner) -> None:
        self._remove_grad_hooks()

    def before_val_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._resize(data_batch)

    def before_test_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._resize(data_batch)

    def _resize(self, data_batch) -> None:
        if self.fixed is not None and data_batch is not None:
            resize_data_batch_(data_batch, self.fixed['img_size'])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        ranking = self.ranking or (Ranking(**self._restored['ranking'])
                                   if self._restored.get('ranking') else None)
        estimator = (self.estimator.state_dict() if self.estimator
                     else self._restored.get('estimator'))
        return dict(
            version=STATE_VERSION, names=self.space.names,
            ranking=dict(channels=ranking.channels, blocks=ranking.blocks) if ranking else None,
            estimator=estimator, trajectory=self.trajectory, search_seconds=self.search_seconds,
            fixed=self.fixed)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[STATE_KEY] = self.state_dict()
        if self.fixed is not None:
            shared = PruningState()
            shared.update(self._fixed_choice(), dict(
                method='jointprune', iteration=self.fixed['iteration'],
                img_size=self.fixed['img_size'], latency=self.fixed['latency'],
                budget=self.fixed['budget'], unit=self.fixed['unit']))
            checkpoint[PRUNING_KEY] = shared.to_dict()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        if state.get('version') != STATE_VERSION or state['names'] != self.space.names:
            raise ValueError(
                f"checkpoint's JointPruning state (version {state.get('version')}, "
                f"coordinates {state.get('names')}) does not fit this hook (version "
                f'{STATE_VERSION}, coordinates {self.space.names}): another model or ladder')
        self._restored = state
        self.trajectory = list(state['trajectory'])
        self.search_seconds = float(state['search_seconds'])
        self.fixed = state['fixed']
