"""JointPruningHook: search width, depth and camera image size by numerical gradients inside a
training run, then fix the sub-network and fine-tune it.

Iterations [search_begin, search_end) of the run are the search: every `interval` iterations,
before the training step, one estimator step evaluates perturbed sub-networks of the current
pruning vector on the step's batch (sharing the dense weights, see `subnet` and `evaluate`) and
moves the vector within the latency budget. Between search steps the dense weights train as
usual: the sub-networks borrow the weights of the dense model that every other method prunes,
the ranking of channels and blocks stays meaningful, and the search does not tilt the weights
towards the vectors it happened to visit first. At `search_end` the vector is rounded, the
sub-network is written as a solution JSON (`widths`, `removed_blocks`, `channels`, `img_size`)
with a config at its image size, masked into the model (`masks`), and the rest of the run
fine-tunes it; batches are resized to the chosen image size inside the hook.

Files in the work directory: `jointprune_trajectory.jsonl` (one line per search step),
`jointprune_trajectory.png`, `jointprune_solution.json`, `jointprune_final_config.py`.
The hook's state (ranking, estimator, trajectory, fixed sub-network) travels in checkpoints
under `jointprune`, so a resumed run goes on and a checkpoint of the fixed sub-network loads into
a freshly built dense model (the structure is applied before the weights are loaded).
"""
import json
import os
import os.path as osp
import tempfile
import time
from typing import Optional

import numpy as np
from mmdet3d.registry import HOOKS
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdp.solvers.problem import atomic_write_json
from mmdp.structure import StructureChoice, derive_structure

from .estimator import SelfAdaptedGradient
from .evaluate import SubnetLoss
from .final_config import dump_config, final_size_config
from .latency import build_sized_latency
from .masks import apply_fixed_choice, zero_optimizer_state
from .plot import plot_trajectory
from .projection import LatencyProjection
from .ranking import bn_gamma_ranking
from .resize import resize_data_batch_
from .space import PruningSpace, Ranking

STATE_KEY = 'jointprune'
STATE_VERSION = 1
TRAJECTORY = 'jointprune_trajectory.jsonl'
PLOT = 'jointprune_trajectory.png'
SOLUTION = 'jointprune_solution.json'
FINAL_CONFIG = 'jointprune_final_config.py'


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class JointPruningHook(Hook):
    """See the module doc. Arguments:

    prune_ratio: the budget is (1 - prune_ratio) x the predicted dense latency at full size.
    latency: the latency model (`mmdp.jointprune.latency.build_sized_latency`).
    search_end: the sub-network is fixed after the training step of iteration search_end - 1
        (0: before training); search steps run before the training steps of iterations
        search_begin, search_begin + interval, ... below search_end.
    ladder: camera image sizes (H, W), the full size (the config's) first, then smaller ones.
    chunk, min_width, min_depth, prune_residual: the pruning vector (`space.PruningSpace`).
    pairs, step, sigma, grow, step_range, sigma_range, seed: the estimator
        (`estimator.SelfAdaptedGradient`).
    input_shape: the backbone input the structure and tables are taken at; default the
        config's `latency_input_shape`.
    """
    priority = 'NORMAL'

    def __init__(self, prune_ratio: float, latency: dict, search_end: int,
                 search_begin: int = 0, interval: int = 1, ladder: Optional[list] = None,
                 chunk: int = 32, min_width: float = 0.25, min_depth: int = 1,
                 prune_residual: bool = False, pairs: int = 2, step: float = 0.1,
                 sigma: float = 0.15, grow: float = 1.5, step_range=(0.01, 0.5),
                 sigma_range=(0.05, 0.5), seed: int = 0, input_shape=None):
        if not 0 < prune_ratio < 1:
            raise ValueError(f'prune_ratio must lie in (0, 1), found {prune_ratio}')
        if not 0 <= search_begin <= search_end:
            raise ValueError(f'need 0 <= search_begin ({search_begin}) <= search_end '
                             f'({search_end})')
        if interval < 1:
            raise ValueError(f'interval must be >= 1 iteration, found {interval}')
        self.prune_ratio, self.latency_cfg = float(prune_ratio), dict(latency)
        self.search_begin, self.search_end, self.interval = search_begin, search_end, interval
        self.ladder, self.input_shape = ladder, input_shape
        self.space_args = dict(chunk=chunk, min_width=min_width, min_depth=min_depth,
                               prune_residual=prune_residual)
        self.estimator_args = dict(pairs=pairs, step=step, sigma=sigma, grow=grow,
                                   step_range=tuple(step_range), sigma_range=tuple(sigma_range),
                                   seed=seed)
        self.seed = int(seed)
        self.structure = self.space = self.ranking = self.estimator = self.latency = None
        self.fixed = None  # the fixed sub-network, a dict (see _fix)
        self.trajectory, self.search_seconds = [], 0.0
        self._restored = None
        self._applied = False
        self._grad_handles = []
        self._latency_cache = {}

    # ------------------------------------------------------------------ set-up
    def before_run(self, runner) -> None:
        model = _unwrap(runner.model)
        shape = self.input_shape or runner.cfg.get('latency_input_shape')
        if shape is None:
            raise ValueError('JointPruningHook needs the backbone input shape: set '
                             'latency_input_shape in the config or input_shape in the hook')
        shape = tuple(int(s) for s in shape)
        self.structure = derive_structure(model, shape)
        full = shape[2:]
        ladder = [tuple(s) for s in (self.ladder or [full])]
        if ladder[0] != full:
            raise ValueError(f'the first ladder size {ladder[0]} must be the full image size '
                             f'{full} (latency_input_shape / input_shape)')
        divisor = int(getattr(model.data_preprocessor, 'pad_size_divisor', 1) or 1)
        self.space = PruningSpace(self.structure, ladder, divisor=divisor, **self.space_args)

    def _setup_search(self, runner) -> None:
        model = _unwrap(runner.model)
        restored = self._restored or {}
        if restored.get('ranking'):
            self.ranking = Ranking(**restored['ranking'])
        else:
            self.ranking = bn_gamma_ranking(model, self.structure, self.space.stages)
        self.latency = build_sized_latency(self.latency_cfg, self.structure,
                                           self.space.full_size, self.space.ladder)
        self.dense_latency = self.latency(StructureChoice(), self.space.full_size)
        self.budget = (1 - self.prune_ratio) * self.dense_latency
        self.projection = LatencyProjection(self.latency_of, self.budget, self.space.cells)
        u0 = self.projection(np.ones(self.space.dim))
        self.estimator = SelfAdaptedGradient(u0, **self.estimator_args)
        if restored.get('estimator'):
            self.estimator.load_state_dict(restored['estimator'])
        runner.logger.info(
            f'JointPruning: {self.space.dim} coordinates {self.space.names}; dense latency '
            f'{self.dense_latency:.4g} {self.latency.unit}, budget {self.budget:.4g} '
            f'(prune ratio {self.prune_ratio}); image sizes {list(self.space.ladder)}'
            + ('; latency at other sizes = full-size prediction x pixel ratio'
               if self.latency.scaled_sizes and len(self.space.ladder) > 1 else ''))

    def before_train(self, runner) -> None:
        if self.fixed is not None:
            self._apply_fixed(runner)
            return
        if self.search_end > runner.max_iters:
            raise ValueError(f'JointPruningHook search_end={self.search_end} is beyond the '
                             f'run ({runner.max_iters} iterations)')
        self._setup_search(runner)
        if runner.iter >= self.search_end:
            self._fix(runner)

    # ------------------------------------------------------------------ search
    def latency_of(self, u) -> float:
        setting = self.space.decode(u)
        if setting not in self._latency_cache:
            choice = self.space.to_choice(setting, self.ranking)
            self._latency_cache[setting] = self.latency(choice, setting.size)
        return self._latency_cache[setting]

    def _search_step(self, runner, data_batch) -> None:
        start = time.perf_counter()
        model = _unwrap(runner.model)
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
        setting = self.space.decode(record.vector)
        self.trajectory.append(dict(
            step=est.count, iter=runner.iter, names=self.space.names, vector=record.vector,
            setting=setting.summary(self.space), loss=record.loss,
            latency=self.latency_of(record.vector), budget=self.budget,
            unit=self.latency.unit, candidate=record.candidate,
            candidate_loss=record.candidate_loss, outcome=record.outcome,
            step_size=record.step, sigma=record.sigma, grad_norm=record.grad_norm,
            evaluations=record.evaluations, seconds=seconds))
        self._write_trajectory(runner)
        runner.logger.info(
            f'JointPruning step {est.count}: loss {record.loss:.4f}, latency '
            f'{self.latency_of(record.vector):.4g}/{self.budget:.4g} {self.latency.unit}, '
            f'{record.outcome}, '
            f'step {record.step:.3g}, sigma {record.sigma:.3g}, {record.evaluations} '
            f'evaluations, {seconds:.1f} s')

    def _write_trajectory(self, runner) -> None:
        """Rewrite the whole file through a temporary one, so that it is never half-written."""
        if not is_main_process():
            return
        fd, tmp = tempfile.mkstemp(dir=runner.work_dir, suffix='.jsonl')
        try:
            with os.fdopen(fd, 'w') as f:
                f.writelines(json.dumps(r) + '\n' for r in self.trajectory)
            os.replace(tmp, osp.join(runner.work_dir, TRAJECTORY))
        except BaseException:
            os.unlink(tmp)
            raise

    # ------------------------------------------------------------------ fix
    def _fix(self, runner) -> None:
        u = self.estimator.u
        setting = self.space.decode(u)
        choice = self.space.to_choice(setting, self.ranking)
        latency = self.latency_of(u)
        last_loss = self.trajectory[-1]['loss'] if self.trajectory else None
        self.fixed = dict(
            widths=dict(choice.widths), removed_blocks=sorted(choice.removed_blocks),
            channels=choice.channels, img_size=list(setting.size), vector=u.tolist(),
            latency=latency, iteration=runner.iter)
        if is_main_process():
            solution = dict(
                status='feasible', objective=last_loss, latency=latency,
                widths=choice.all_widths(self.structure),
                removed_blocks=sorted(choice.removed_blocks), gap=None,
                seconds=self.search_seconds, img_size=list(setting.size),
                channels=choice.channels,
                meta=dict(method='jointprune', objective='search loss (lower is better)',
                          budget=self.budget, dense_latency=self.dense_latency,
                          unit=self.latency.unit, latency_model=self.latency_cfg,
                          scaled_sizes=self.latency.scaled_sizes, names=self.space.names,
                          vector=u.tolist(), setting=setting.summary(self.space),
                          steps=self.estimator.count, iteration=runner.iter))
            atomic_write_json(osp.join(runner.work_dir, SOLUTION), solution)
            dump_config(final_size_config(runner.cfg, setting.size, self.space.full_size),
                        osp.join(runner.work_dir, FINAL_CONFIG))
            if self.trajectory:
                plot_trajectory(self.trajectory, osp.join(runner.work_dir, PLOT))
        self._apply_fixed(runner)
        zero_optimizer_state(runner.optim_wrapper.optimizer, _unwrap(runner.model),
                             self.structure, self._fixed_choice())
        runner.logger.info(
            f'JointPruning fixed at iteration {runner.iter}: {setting.summary(self.space)}, '
            f'latency {latency:.4g}/{self.budget:.4g} {self.latency.unit}; wrote '
            f'{osp.join(runner.work_dir, SOLUTION)}')

    def _fixed_choice(self) -> StructureChoice:
        return StructureChoice(self.fixed['widths'], self.fixed['removed_blocks'],
                               self.fixed['channels'])

    def _apply_fixed(self, runner) -> None:
        """Mask the fixed sub-network into the model once; hook its gradients."""
        if self._applied:
            return
        self._grad_handles = apply_fixed_choice(_unwrap(runner.model), self.structure,
                                                self._fixed_choice())
        self._applied = True

    # ------------------------------------------------------------------ iterations
    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if (self.fixed is None and runner.iter >= self.search_begin
                and (runner.iter - self.search_begin) % self.interval == 0):
            self._search_step(runner, data_batch)
        self._resize(data_batch)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        # Before the checkpoint hook (lower priority) saves this iteration.
        if self.fixed is None and runner.iter + 1 >= self.search_end:
            self._fix(runner)

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
                                   if self._restored and self._restored.get('ranking') else None)
        return dict(
            version=STATE_VERSION, names=self.space.names,
            ranking=dict(channels=ranking.channels, blocks=ranking.blocks) if ranking else None,
            estimator=self.estimator.state_dict() if self.estimator else None,
            trajectory=self.trajectory, search_seconds=self.search_seconds, fixed=self.fixed)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[STATE_KEY] = self.state_dict()

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
        if state['fixed'] is not None:
            self.fixed = state['fixed']
            # Before the weights load: the checkpoint holds the masked model's keys.
            self._apply_fixed(runner)
