"""The hook that prunes the backbone under a latency budget during training (MDP or HALP)."""
import hashlib
import json
import os
import os.path as osp
import re
import traceback
from typing import Optional, Union

from mmdet3d.registry import HOOKS
from mmengine.dist import (all_gather_object, broadcast_object_list, get_world_size,
                           is_main_process)
from mmengine.hooks import Hook

from mmdp.cli import RunError
from mmdp.fileio import atomic_write_json
from mmdp.latency import (LATENCY_MODELS, BilinearLutLatency, LatencyTable, LinearLutLatency,
                          TableMismatchError, device_name)
from mmdp.latency.table import profiled_widths
from mmdp.pruning.event import build_problem, choice_from_solution, format_summary, summarize
from mmdp.pruning.masks import PruningMasks
from mmdp.pruning.state import CHECKPOINT_KEY, PruningState
from mmdp.solvers import SOLVERS, HALPSolver, MDPSolver, Problem, Solution, SolverError
from mmdp.structure import StructureChoice

from .runner_utils import bare_model, runner_optimizers, runner_structure
from .saliency_hook import SaliencyHook

# The files each event writes under WORK_DIR/pruning/ (eventE_iterI_KIND.json).
EVENT_FILES = ('problem', 'solution', 'summary', 'saliency')


@HOOKS.register_module()
class PruningHook(Hook):
    """Prune channels and residual blocks of the backbone to a latency budget.

    Pruning event s = 1..steps runs before iteration `at_iter + (s - 1) * interval` (0-based,
    i.e. after that many iterations) with the budget L0 * (1 - prune_ratio) ** (s / steps),
    L0 the dense backbone's latency under `latency_model`. MDP is one step with the 'mdp'
    solver and the bilinear LUT; HALP is N steps with the 'halp' solver and the linear LUT,
    whose input widths are frozen at their current values. The saliency comes from the
    `SaliencyHook` of the same run (what it collected since the previous event).

    The solver runs on rank 0 and its decision is broadcast. Each event writes its problem,
    solution and summary JSON to `<work_dir>/<out_dir>/`. Pruned channels and removed blocks are
    masked in the live model (see `mmdp.pruning.masks`); the state travels in checkpoints.

    Args:
        latency_table: table file of `tools/profile_latency.py` for this device and the
            config's `latency_input_shape`.
        prune_ratio: the fraction of the modelled dense latency to remove (0.45: "MDP-45%").
        at_iter: iteration of the first (or only) event; the saliency window must start before
            it and last up to the last event.
        steps, interval: number of events and iterations between them.
        chunk: channels are kept in multiples of this (a group's full width is always allowed);
            at least the table's channel step, which is the default.
        latency_model: a `LATENCY_MODELS` name or dict (extra keys go to its constructor).
        solver: a `SOLVERS` name or dict; default dict(type='mdp', time_limit=60).
        latency_device: the device the table must have been profiled on; default: the one this
            run trains on. Name another to prune for a deployment device.
        latency_dtype, latency_runtime: the precision ('fp32', 'fp16', ...) and runtime
            ('torch', 'cudagraph') the deployed model runs in; the table must have been
            profiled so.
        out_dir: folder under the work dir for the event files. A rerun of an event (a resumed
            run) that decides otherwise keeps the earlier files aside as
            `eventE_iterI_supersededK_*.json`.
    """
    priority = 'NORMAL'

    def __init__(self, latency_table: str, prune_ratio: float, at_iter: int, steps: int = 1,
                 interval: int = 0, chunk: Optional[int] = None,
                 latency_model: Union[str, dict] = 'lut_bilinear',
                 solver: Union[str, dict, None] = None,
                 latency_device: Optional[str] = None, latency_dtype: str = 'fp32',
                 latency_runtime: str = 'torch', out_dir: str = 'pruning'):
        if not 0 < prune_ratio < 1:
            raise ValueError(f'PruningHook: prune_ratio must lie in (0, 1), found {prune_ratio}')
        if at_iter < 1:
            raise ValueError(f'PruningHook: at_iter must be >= 1 (saliency is collected '
                             f'before it), found {at_iter}')
        if steps < 1 or (steps > 1 and interval < 1):
            raise ValueError(f'PruningHook: steps must be >= 1 and interval >= 1 when steps > 1, '
                             f'found steps={steps}, interval={interval}')
        if chunk is not None and chunk < 1:
            raise ValueError(f'PruningHook: chunk must be >= 1, found {chunk}')
        self.latency_cfg = (dict(type=latency_model) if isinstance(latency_model, str)
                            else dict(latency_model))
        solver = dict(type='mdp', time_limit=60) if solver is None else solver
        self.solver_cfg = dict(type=solver) if isinstance(solver, str) else dict(solver)
        for registry, cfg, what in ((LATENCY_MODELS, self.latency_cfg, 'latency_model'),
                                    (SOLVERS, self.solver_cfg, 'solver')):
            name = cfg.get('type')
            if not isinstance(name, str) or registry.get(name) is None:
                raise ValueError(f'PruningHook: {what} type {name!r} is not registered; '
                                 f'choose one of {sorted(registry.module_dict)}')
        self.iterative = issubclass(SOLVERS.get(self.solver_cfg['type']), HALPSolver)
        if steps > 1 and not self.iterative:
            raise ValueError(f"PruningHook: steps={steps} needs a solver that keeps widths at "
                             f"their current values or below ('halp'); "
                             f"{self.solver_cfg['type']!r} prunes once")
        self.table_path, self.prune_ratio = latency_table, float(prune_ratio)
        self.events = [int(at_iter) + s * int(interval) for s in range(int(steps))]
        self.chunk, self.latency_device, self.out_dir = chunk, latency_device, out_dir
        self.latency_dtype, self.latency_runtime = latency_dtype, latency_runtime
        self.state = PruningState()
        self._grad_hooks = []

    # ------------------------------------------------------------------ set-up
    def before_train(self, runner) -> None:
        """Check the set-up before the first iteration (not in `before_run`: testing a
        checkpoint of a pruning run runs that too); re-mask a resumed model."""
        self.structure = runner_structure(runner)
        self.table = self._load_table(runner)
        try:
            self.table.check_structure(self.structure)
        except ValueError as e:
            raise ValueError(f'latency table {self.table_path} does not fit the model: {e}; '
                             f'{self._profile_hint(runner)}') from None
        step = self.table.meta['step']
        for group, grid in profiled_widths(self.structure, step).items():
            if self.table.widths.get(group) != grid:
                raise ValueError(f'latency table {self.table_path}: group {group!r} has widths '
                                 f'{self.table.widths.get(group)}, not the grid of its '
                                 f'{step}-channel step {grid}; {self._profile_hint(runner)}')
        self.chunk = step if self.chunk is None else int(self.chunk)
        if self.chunk < step:
            raise ValueError(f'PruningHook: chunk={self.chunk} is finer than the {step}-channel '
                             f'step of latency table {self.table_path}, which has no timings '
                             f'below {step} channels; set chunk >= {step} or profile with '
                             f'--step {self.chunk}')
        self.dense_ms = self._latency_model().predict(StructureChoice())
        self.reference = self._latency_model(reference=True)
        self.saliency = self._saliency_hook(runner)
        last, max_iters = self.events[-1], runner.train_loop.max_iters
        if last >= max_iters:
            raise ValueError(f'PruningHook: the last pruning event is at iteration {last}, but '
                             f'training stops at {max_iters}: nothing would be fine-tuned')
        if self.state.events_done < len(self.events):
            self._check_reachable(runner)
        if self.state.pruned:  # resumed: the weights came masked, the masks and hooks did not
            self._apply(runner)

    def _check_reachable(self, runner) -> None:
        """Fail before training when no structure reaches the last event's budget: the
        smallest latency reachable follows from the table and the structure alone. Iterative
        schedules are checked with the bilinear model, since their frozen input widths shrink
        from event to event."""
        budget = self.dense_ms * (1 - self.prune_ratio)
        problem = Problem.from_dict(self.reference.to_problem(
            self.structure, budget=budget, chunk=self.chunk))
        try:
            solution = MDPSolver(time_limit=60).solve(problem)
        except SolverError as e:
            runner.logger.warning(f'PruningHook: the smallest reachable latency could not be '
                                  f'checked before training ({e})')
            return
        if solution.status == 'infeasible':
            raise ValueError(
                f'PruningHook: prune_ratio={self.prune_ratio} asks for {budget:.6g} ms, but the '
                f'smallest latency any structure reaches is {solution.latency:.6g} ms '
                f'({self.reference.__class__.__name__} over {self.table_path}, {self.chunk}-channel'
                f' steps): set prune_ratio <= {1 - solution.latency / self.dense_ms:.4f}')

    def _profile_hint(self, runner) -> str:
        """The command that profiles the table this run needs. Where a table of other settings
        exists, the command writes beside it, to a name made of those settings (profiling into
        the existing file would try to resume it and stop on the same mismatch)."""
        shape = [int(s) for s in runner.cfg.latency_input_shape]
        step = self.chunk or self._existing_step() or 32  # 32: profile_latency's default
        out = self.table_path
        if osp.exists(out):
            device = self.latency_device or device_name(
                next(bare_model(runner).parameters()).device)
            slug = re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')
            root, ext = osp.splitext(out)
            out = (f"{root}_{slug}_{self.latency_dtype}_{self.latency_runtime}_"
                   f"{'x'.join(map(str, shape))}_step{step}{ext or '.json'}")
        hooks = [h.get('type') for h in runner.cfg.get('custom_hooks', [])]
        name = type(self).__name__  # a subclass's config entry has its own type
        where = (f'custom_hooks.{hooks.index(name)}.latency_table'
                 if name in hooks else f'the {name}\'s latency_table')
        command = (f"python tools/profile_latency.py {runner.cfg.filename or 'CONFIG'} --out {out} "
                   f"--input-shape {' '.join(map(str, shape))} --step {step} "
                   f'--dtype {self.latency_dtype} --runtime {self.latency_runtime}')
        then = '' if out == self.table_path else f', then set {where}={out}'
        return f'make a table on the target device with `{command}`{then}'

    def _existing_step(self) -> Optional[int]:
        """The step of the table file, when it is readable: the run's chunk follows it."""
        try:
            with open(self.table_path) as f:
                return int(json.load(f)['meta']['step'])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _load_table(self, runner) -> LatencyTable:
        device = self.latency_device or device_name(next(bare_model(runner).parameters()).device)
        if not osp.isfile(self.table_path):
            raise FileNotFoundError(f'latency table {self.table_path} does not exist; '
                                    f'{self._profile_hint(runner)}')
        try:
            return LatencyTable.load(self.table_path, device=device,
                                     input_shape=runner.cfg.latency_input_shape,
                                     dtype=self.latency_dtype, runtime=self.latency_runtime)
        except TableMismatchError as e:
            raise TableMismatchError(f'{e.reason}; {self._profile_hint(runner)}',
                                     e.reason) from None

    def _saliency_hook(self, runner) -> SaliencyHook:
        found = [h for h in runner.hooks if isinstance(h, SaliencyHook)]
        if not found:
            raise ValueError('PruningHook needs a SaliencyHook in custom_hooks')
        hook = found[0]
        if not hook.begin < self.events[0] or hook.end < self.events[-1]:
            raise ValueError(f'the SaliencyHook window [{hook.begin}, {hook.end}) must start '
                             f'before the first pruning event ({self.events[0]}) and last up to '
                             f'the last one ({self.events[-1]})')
        return hook

    def _latency_model(self, current: Optional[StructureChoice] = None,
                       reference: bool = False):
        """The configured latency model; HALP's linear LUT gets its input widths frozen at
        `current`. `reference`: what the summaries predict latency with, where the linear LUT is
        replaced by the bilinear one over the same table (frozen inputs are an approximation
        made to decide, not a prediction)."""
        # Built from the class: Registry.build would search the run's default scope (mmdet3d)
        # first and warn that these registries are not in it.
        cfg = dict(self.latency_cfg, table=self.table)
        cls = LATENCY_MODELS.get(cfg.pop('type'))
        if issubclass(cls, LinearLutLatency):
            if reference:
                cls = BilinearLutLatency
            elif current is not None:
                cfg['input_widths'] = current.all_widths(self.structure)
        return cls(**cfg)

    # ------------------------------------------------------------------ checkpoints
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if CHECKPOINT_KEY in checkpoint:
            self.state = PruningState.from_dict(checkpoint[CHECKPOINT_KEY])
            runner.logger.info(f'pruning state restored: {self.state.events_done} of '
                               f'{len(self.events)} pruning events done')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.state.to_dict()

    # ------------------------------------------------------------------ training
    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        done = self.state.events_done
        if done < len(self.events) and runner.iter >= self.events[done]:
            self._prune(runner)

    def after_train(self, runner) -> None:
        self._remove_grad_hooks()

    def before_test(self, runner) -> None:
        """A masked checkpoint tested as it is: its removed decoder layers must pass their query
        on (zero weights do not make a post-norm layer an identity; none in a backbone-only
        run)."""
        if self.state.pruned:
            self._bypass = PruningMasks(runner_structure(runner), self.state.choice()).bypass(
                bare_model(runner))

    def _remove_grad_hooks(self) -> None:
        for handle in self._grad_hooks:
            handle.remove()
        self._grad_hooks = []

    def _apply(self, runner) -> None:
        """Mask the model, its optimizer state and (through hooks) its gradients."""
        masks = PruningMasks(self.structure, self.state.choice())
        self._remove_grad_hooks()
        self._grad_hooks = masks.enforce_(bare_model(runner), runner_optimizers(runner))

    def _prune(self, runner) -> None:
        event = self.state.events_done + 1
        payload = [None]
        if is_main_process():
            try:
                payload[0] = self._decide(runner, event)
            except Exception:  # every rank must learn of it, or the others wait forever
                payload[0] = {'error': traceback.format_exc()}
        broadcast_object_list(payload)
        decision = payload[0]
        if 'error' in decision:
            raise RunError(f'pruning event {event} failed on rank 0:\n{decision["error"]}')
        choice = StructureChoice(decision['widths'], decision['removed_blocks'],
                                 decision['channels'])
        self.state.update(choice, decision['summary'])
        self._apply(runner)
        self.saliency.collector.reset()
        runner.logger.info(format_summary(decision['summary']))
        self._check_ranks_agree(runner, event)

    def _check_ranks_agree(self, runner, event: int) -> None:
        """Every rank must hold the same structure and weights after an event (the decision is
        broadcast, DDP keeps the weights in step): a digest of both, gathered from all ranks."""
        world = get_world_size()
        if world < 2:
            return
        digest = hashlib.sha256(json.dumps(self.state.to_dict()['widths'],
                                           sort_keys=True).encode())
        digest.update(json.dumps(self.state.channels, sort_keys=True).encode())
        for name, param in bare_model(runner).named_parameters():
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
        digests = all_gather_object(digest.hexdigest())
        if len(set(digests)) != 1:
            raise RunError(f'pruning event {event}: the ranks hold different masks or weights '
                           f'afterwards (digests {digests})')
        runner.logger.info(f'pruning event {event}: masks and weights identical on all {world} '
                           f'ranks (sha256 {digests[0][:16]})')

    def _decide(self, runner, event: int) -> dict:
        """Rank 0: solve this event's problem, write its files, return the new structure."""
        current = self.state.choice()
        budget = self.dense_ms * (1 - self.prune_ratio) ** (event / len(self.events))
        saliency = self.saliency.collector
        values = saliency.average()
        problem, order = build_problem(self._latency_model(current), self.structure, values,
                                       current, budget, self.chunk)
        options = {'current_widths': current.all_widths(self.structure)} if self.iterative else {}
        cfg = dict(self.solver_cfg, **options)
        solution = SOLVERS.get(cfg.pop('type'))(**cfg).solve(problem)
        stem = osp.join(runner.work_dir, self.out_dir, f'event{event}_iter{runner.iter}')
        self._keep_aside_if_different(runner, stem, solution)
        problem.save(f'{stem}_problem.json')
        solution.save(f'{stem}_solution.json')
        # Per-unit saliency with its structure: what any decision keeps can be valued against
        # it later (tools/compare_methods.py values every method against one window).
        atomic_write_json(f'{stem}_saliency.json', {
            'structure': self.structure.to_dict(),
            'saliency': {name: v.tolist() for name, v in values.items()}})
        if solution.status == 'infeasible':
            raise RunError(
                f'no structure fits the latency budget {budget:.6g} ms (prune_ratio '
                f'{self.prune_ratio}); the smallest latency reachable is {solution.latency:.6g} '
                f'ms; see {stem}_solution.json')
        choice = choice_from_solution(solution, order, current)
        summary = summarize(
            self.structure, current, choice, self.reference, iteration=runner.iter, event=event,
            events=len(self.events), budget_ms=budget, dense_ms=self.dense_ms,
            latency_model=self.latency_cfg['type'], solver=self.solver_cfg,
            status=solution.status, gap=solution.gap, seconds=solution.seconds, objective=solution.objective,
            problem_latency_ms=solution.latency, saliency_contributions=saliency.count)
        atomic_write_json(f'{stem}_summary.json', summary)
        return {'widths': choice.widths, 'removed_blocks': sorted(choice.removed_blocks),
                'channels': choice.channels, 'summary': summary}

    @staticmethod
    def _keep_aside_if_different(runner, stem: str, solution: Solution) -> None:
        """An event run again (a run resumed from before it) must not overwrite the files of an
        earlier, different decision: they move to `<stem>_superseded<K>_*.json`."""
        previous = f'{stem}_solution.json'
        if not osp.isfile(previous):
            return
        try:
            old = Solution.load(previous)
            same = (old.widths == solution.widths
                    and sorted(old.removed_blocks) == sorted(solution.removed_blocks))
        except (OSError, ValueError):
            same = False
        if same:
            return
        k = 1
        while any(osp.exists(f'{stem}_superseded{k}_{kind}.json')
                  for kind in EVENT_FILES):
            k += 1
        for kind in EVENT_FILES:
            if osp.exists(f'{stem}_{kind}.json'):
                os.replace(f'{stem}_{kind}.json', f'{stem}_superseded{k}_{kind}.json')
        runner.logger.warning(f'{osp.basename(stem)} was decided before with another structure; '
                              f'its files are kept as {osp.basename(stem)}_superseded{k}_*.json')
