"""MDP: one-hot widths per group and a keep binary per block, latency bilinear in the width
choices of each layer's output and input groups (gated by its block), maximise kept importance
under the latency budget.

Backends:

- `milp` (default): the products are linearised exactly and HiGHS (Pyomo's appsi interface, which
  takes a MIP start) proves the optimum, starting from HALP's answer. For each
  (output group, input group, block) a matrix z[k, j] >= 0 has row sums equal to the output
  one-hot and column sums equal to the input one-hot. Both one-hots are the block-gated ones
  u[g, k] = x[g, k] * keep[block] (sum_k u = keep, u <= x, which is exact because x is one-hot),
  so a removed block forces z = 0 and a kept one leaves a transport plan between two unit vectors,
  whose only solution is z[k, j] = x_out[k] * x_in[j]. This is the convex hull of each product,
  so the LP relaxation is as tight as such a term allows.
- `mindtpy`: the bilinear MINLP itself, solved by Pyomo's MindtPy outer approximation as the
  published code did (GLPK for the MILP master, IPOPT for the NLP subproblems, here through
  cyipopt and mmdp.solvers.quadratic_ipopt; `make install-mindtpy`). On this non-convex
  problem it is a heuristic: its answers are reported as `feasible`, never `optimal`, and a
  budget it finds no choice for is checked by HiGHS.
"""
import logging
import math
import time
from collections import defaultdict
from typing import Optional

import numpy as np
import pyomo.environ as pyo
from mmengine.logging import print_log
from pyomo.contrib.appsi.base import TerminationCondition
from pyomo.contrib.appsi.solvers.highs import Highs
from pyomo.opt import TerminationCondition as LegacyTermination

from .base import BaseSolver, ChoiceSpace, SolverError, make_solution
from .halp import HALPSolver
from .problem import Problem, Solution
from .quadratic_ipopt import as_cyipopt
from .registry import SOLVERS

BACKENDS = ('milp', 'mindtpy')
# nlp_solver='cyipopt' is IPOPT through cyipopt with mmdp's interface for quadratic models
# (mmdp.solvers.quadratic_ipopt), which needs no AMPL executable nor PyNumero's ASL library.
# No-good cuts: every variable is binary, so each combination tried is cut off; without them OA
# cycles back to a combination on this non-convex program and may stop with no choice at all.
MINDTPY_DEFAULTS = dict(strategy='OA', mip_solver='glpk', nlp_solver='cyipopt',
                        heuristic_nonconvex=True, add_no_good_cuts=True)
# How to get each sub-solver MindtPy may be asked for (Pyomo looks for executables on PATH,
# except cyipopt and the appsi_* interfaces, which are Python packages).
INSTALL_HINTS = {
    'glpk': "`make install-mindtpy` (Debian's glpk-utils: GLPK's glpsol)",
    'ipopt': "an AMPL `ipopt` executable on PATH, which Debian does not ship; nlp_solver='cyipopt' "
             '(the default) runs IPOPT without it',
    'cyipopt': '`make install-mindtpy` (Debian\'s coinor-libipopt-dev, then `pip install cyipopt`, '
               'built against that library)',
    'appsi_highs': '`pip install highspy`',
    'cbc': '`apt-get install coinor-cbc`',
}


def _gate(layer, removable: set) -> Optional[str]:
    return layer.block if layer.block in removable else None


def build_model(problem: Problem, space: ChoiceSpace, linearise: bool = True) -> pyo.ConcreteModel:
    """The MDP program as a Pyomo model.

    Latency and value are scaled to about [0, 1] (by the sum of each layer's largest entry) so
    that the solver's absolute tolerances mean the same on every problem; `m.latency_scale` and
    `m.value_scale` hold the factors. `m.rhs` is the scaled budget.
    """
    m = pyo.ConcreteModel('mdp')
    allowed, removable = space.allowed, set(space.removable)
    m.x = pyo.Var([(g, k) for g in problem.groups for k in allowed[g]], domain=pyo.Binary)
    m.one_width = pyo.Constraint(
        list(problem.groups), rule=lambda m, g: sum(m.x[g, k] for k in allowed[g]) == 1)
    m.keep = pyo.Var(space.removable, domain=pyo.Binary)

    # Gated one-hots u[g, b, k] = x[g, k] * keep[b], one per (group, removable block) in use.
    gated = []
    for layer in problem.layers:
        gate = _gate(layer, removable)
        for g in (layer.group, layer.input_group):
            if gate is not None and g is not None and (g, gate) not in gated:
                gated.append((g, gate))
    m.u = pyo.Var([(g, b, k) for g, b in gated for k in allowed[g]], bounds=(0, 1))
    m.u_sum = pyo.Constraint(
        gated, rule=lambda m, g, b: sum(m.u[g, b, k] for k in allowed[g]) == m.keep[b])
    m.u_le_x = pyo.Constraint(list(m.u.keys()), rule=lambda m, g, b, k: m.u[g, b, k] <= m.x[g, k])

    def one_hot(g, gate, k):
        return m.x[g, k] if gate is None else m.u[g, gate, k]

    # Layers sharing (group, input group, gate) add up into one table.
    value = defaultdict(float)  # (group, gate, k) -> importance
    linear = defaultdict(float)  # (group, gate, k) -> latency of layers with a fixed input
    tables = {}  # (group, input group, gate) -> summed latency table
    latency_scale = value_scale = 0.0
    for layer in problem.layers:
        gate = _gate(layer, removable)
        value_scale += float(np.abs(layer.importance).max())
        latency_scale += float(np.abs(layer.latency).max())
        for k in allowed[layer.group]:
            value[layer.group, gate, k] += float(layer.importance[k])
        if layer.input_group is None:
            for k in allowed[layer.group]:
                linear[layer.group, gate, k] += float(layer.latency[k])
        else:
            key = (layer.group, layer.input_group, gate)
            tables[key] = tables.get(key, 0.0) + layer.latency
    m.latency_scale = latency_scale or 1.0
    m.value_scale = value_scale or 1.0

    terms = [(c, one_hot(g, gate, k)) for (g, gate, k), c in linear.items()]
    pairs = m.pairs = list(tables)
    if linearise:
        m.z = pyo.Var([(t, k, j) for t, (g, h, _) in enumerate(pairs)
                       for k in allowed[g] for j in allowed[h]], bounds=(0, 1))
        m.z_rows = pyo.Constraint(
            [(t, k) for t, (g, _, _) in enumerate(pairs) for k in allowed[g]],
            rule=lambda m, t, k: sum(m.z[t, k, j] for j in allowed[pairs[t][1]])
            == one_hot(pairs[t][0], pairs[t][2], k))
        m.z_cols = pyo.Constraint(
            [(t, j) for t, (_, h, _) in enumerate(pairs) for j in allowed[h]],
            rule=lambda m, t, j: sum(m.z[t, k, j] for k in allowed[pairs[t][0]])
            == one_hot(pairs[t][1], pairs[t][2], j))
        terms += [(float(tables[g, h, gate][k, j]), m.z[t, k, j])
                  for t, (g, h, gate) in enumerate(pairs) for k in allowed[g] for j in allowed[h]]
        m.latency = pyo.Expression(
            expr=pyo.quicksum(c / m.latency_scale * v for c, v in terms))
    else:
        bilinear = [(float(tables[g, h, gate][k, j]), one_hot(g, gate, k) * one_hot(h, gate, j))
                    for g, h, gate in pairs for k in allowed[g] for j in allowed[h]]
        m.latency = pyo.Expression(expr=pyo.quicksum(
            c / m.latency_scale * v for c, v in terms + bilinear))
    m.value = pyo.Expression(expr=pyo.quicksum(
        c / m.value_scale * one_hot(g, gate, k) for (g, gate, k), c in value.items()))
    m.rhs = pyo.Param(mutable=True, initialize=problem.budget / m.latency_scale)
    m.budget = pyo.Constraint(expr=m.latency <= m.rhs)
    m.objective = pyo.Objective(expr=m.value, sense=pyo.maximize)
    return m


def read_choice(m: pyo.ConcreteModel, space: ChoiceSpace) -> tuple:
    """The width positions and removed blocks held by the model's variables."""
    positions = {g: max(ks, key=lambda k: pyo.value(m.x[g, k])) for g, ks in space.allowed.items()}
    removed = [b for b in space.removable if pyo.value(m.keep[b]) < 0.5]
    return positions, removed


def set_choice(m: pyo.ConcreteModel, positions: dict, removed=()) -> None:
    """Give every variable of a linearised model its value at a choice (a MIP start)."""
    for (g, k), var in m.x.items():
        var.set_value(int(positions[g] == k))
    for b, var in m.keep.items():
        var.set_value(int(b not in removed))
    for (g, b, k), var in m.u.items():
        var.set_value(int(positions[g] == k and b not in removed))
    for (t, k, j), var in m.z.items():
        g, h, gate = m.pairs[t]
        var.set_value(int(positions[g] == k and positions[h] == j and gate not in removed))


def _check_mindtpy_subsolvers(options: dict) -> None:
    missing = []
    for role in ('mip_solver', 'nlp_solver'):
        name = options[role]
        if not pyo.SolverFactory(name).available(exception_flag=False):
            hint = INSTALL_HINTS.get(name, f'install {name!r} where Pyomo finds it')
            missing.append(f'{role}={name!r} is not available; to get it: {hint}')
    if missing:
        raise SolverError("mdp backend 'mindtpy' needs its sub-solvers: " + '; '.join(missing)
                          + ". The default backend 'milp' needs only highspy.")


def _fits_or_tighten(problem: Problem, m: pyo.ConcreteModel, positions: dict, removed,
                     solver: str) -> bool:
    """Whether the solver's choice fits the budget when its latency is recomputed exactly; if
    not (the solver met it only to its own tolerance), the model's budget is tightened by twice
    the excess, for the next solve."""
    latency = problem.evaluate({g: problem.groups[g][k] for g, k in positions.items()},
                               removed)[1]
    if problem.fits(latency):
        return True
    print_log(f'mdp: the recomputed latency {latency:.9g} is over the budget by '
              f'{latency - problem.budget:.3g} ({solver}\'s tolerance); solving again with the '
              'excess taken off', logger='current', level=logging.WARNING)
    m.rhs = pyo.value(m.rhs) - 2 * (latency - problem.budget) / m.latency_scale
    return False


@SOLVERS.register_module(name='mdp')
class MDPSolver(BaseSolver):
    """The MDP program (see the module doc).

    Args:
        backend: 'milp' (exact linearisation, HiGHS, proven optimum) or 'mindtpy'.
        time_limit: seconds in all (model building included); past it the best solution found
            is returned as `feasible` with its gap (against HiGHS's bound, or the sum of every
            layer's largest importance while HiGHS has none) and a warning. None: no limit.
        require_optimal: fail (SolverError) instead of returning a solution not proven optimal
            (stopped by `time_limit`); the 'mindtpy' backend never proves optimality.
        mip_rel_gap: relative gap at which HiGHS stops and calls the solution optimal.
        min_widths: {group: smallest width allowed}.
        removable_blocks: the blocks that may go (a subset of the problem's `blocks`);
            None: all of them, []: none (channel-only pruning).
        warm_start: start HiGHS from HALP's answer (exact knapsack, 10-step schedule); it
            finds good solutions sooner, which matters most under a time limit.
        mindtpy_options: options for MindtPy, over MINDTPY_DEFAULTS (with time_limit None,
            MindtPy's own limit of 600 s applies).
        verbose: print the solver's log.
    """
    name = 'mdp'

    def __init__(self, backend: str = 'milp', time_limit: Optional[float] = None,
                 require_optimal: bool = False, mip_rel_gap: float = 1e-6,
                 min_widths: Optional[dict] = None,
                 removable_blocks: Optional[list] = None, warm_start: bool = True,
                 mindtpy_options: Optional[dict] = None, verbose: bool = False):
        super().__init__(min_widths)
        if backend not in BACKENDS:
            raise ValueError(f'mdp: backend {backend!r} is not one of {BACKENDS}')
        if time_limit is not None and not time_limit > 0:
            raise ValueError(f'mdp: time_limit must be positive, found {time_limit}')
        if not 0 <= mip_rel_gap < 1:
            raise ValueError(f'mdp: mip_rel_gap must lie in [0, 1), found {mip_rel_gap}')
        if require_optimal and backend == 'mindtpy':
            raise ValueError("mdp: require_optimal=True needs backend 'milp'; MindtPy's answers "
                             'on this non-convex program are never proven optimal')
        self.backend = backend
        self.time_limit = time_limit
        self.require_optimal = bool(require_optimal)
        self.mip_rel_gap = mip_rel_gap
        self.removable_blocks = removable_blocks
        self.warm_start = warm_start
        self.mindtpy_options = {**MINDTPY_DEFAULTS, **(mindtpy_options or {})}
        self.verbose = verbose

    def choice_space(self, problem: Problem) -> ChoiceSpace:
        return ChoiceSpace.build(problem, min_widths=self.min_widths,
                                 removable_blocks=self.removable_blocks)

    def _solve(self, problem: Problem, space: ChoiceSpace) -> Solution:
        self._deadline = None if self.time_limit is None else time.perf_counter() + self.time_limit
        if self.backend == 'mindtpy':
            return self._solve_mindtpy(problem, space)
        return self._solve_milp(problem, space)

    def _remaining(self) -> Optional[float]:
        if self._deadline is None:
            return None
        return max(self._deadline - time.perf_counter(), 1e-3)

    def _highs(self, m: pyo.ConcreteModel, warm_start: bool = False):
        """Solve with HiGHS; loads the solution into `m` when there is one."""
        solver = Highs()
        if not solver.available():
            raise SolverError('mdp: HiGHS is not available; install it with `pip install highspy`')
        solver.config.stream_solver = self.verbose
        solver.config.load_solution = False
        solver.config.mip_gap = self.mip_rel_gap
        # HiGHS also stops at an absolute gap (1e-6 by default), which on this [0, 1]-scaled
        # objective would be looser than mip_rel_gap: only the relative gap decides.
        solver.highs_options = {'mip_abs_gap': 0.0}
        solver.config.warmstart = warm_start
        solver.set_instance(m)  # outside the timed part: the limit covers what is left after it
        solver.config.time_limit = self._remaining()
        results = solver.solve(m)
        if results.best_feasible_objective is not None:
            results.solution_loader.load_vars()
        return results

    def _start(self, problem: Problem, space: ChoiceSpace, m: pyo.ConcreteModel) -> bool:
        """Set HALP's answer as a MIP start, when there is one within budget."""
        if not self.warm_start:
            return False
        halp = HALPSolver(steps=10, bins=5000, min_widths=self.min_widths)
        answer = halp._solve(problem, halp.choice_space(problem))
        if answer.status == 'infeasible':
            return False
        set_choice(m, {g: problem.width_index[g][w] for g, w in answer.widths.items()})
        return True

    def _solve_milp(self, problem: Problem, space: ChoiceSpace) -> Solution:
        start = time.perf_counter()
        m = build_model(problem, space)
        print_log(f'mdp: MILP with {m.nvariables()} variables and {m.nconstraints()} constraints '
                  f'built in {time.perf_counter() - start:.2f} s', logger='current')
        warm = self._start(problem, space, m)
        # HiGHS meets the budget to its feasibility tolerance; a choice whose recomputed latency
        # is still over it gets the excess taken off the right-hand side and is solved again.
        for _ in range(3):
            results = self._highs(m, warm)
            condition = results.termination_condition
            if condition in (TerminationCondition.infeasible,
                             TerminationCondition.infeasibleOrUnbounded):
                return self._smallest_latency(problem, space, m)
            if results.best_feasible_objective is None:
                raise SolverError(f'mdp: HiGHS found no solution ({condition.name}); '
                                  + ('raise time_limit' if condition
                                     == TerminationCondition.maxTimeLimit else 'see its log'))
            positions, removed = read_choice(m, space)
            if _fits_or_tighten(problem, m, positions, removed, 'HiGHS'):
                break
            warm = False
        else:
            raise SolverError('mdp: HiGHS keeps returning choices over the budget')
        status = 'optimal' if condition == TerminationCondition.optimal else 'feasible'
        solution = make_solution(problem, status, positions, removed)
        # HiGHS's dual bound has no finite value before its root relaxation is solved; the sum
        # of every layer's largest importance bounds the objective too (importance is never
        # negative, a removed block only loses value), so the gap is always finite.
        bound = results.best_objective_bound
        bound = None if bound is None or not np.isfinite(bound) else bound * m.value_scale
        trivial = sum(float(layer.importance.max()) for layer in problem.layers)
        upper = trivial if bound is None else min(bound, trivial)
        solution.gap = max(0.0, upper - solution.objective) / max(solution.objective, 1e-12)
        if status != 'optimal':
            source = ("HiGHS's dual bound" if upper == bound else
                      "the sum of every layer's largest importance"
                      + ('; HiGHS had no bound yet' if bound is None else ''))
            stop = (f'stopped by the time limit ({self.time_limit:g} s)'
                    if condition == TerminationCondition.maxTimeLimit
                    else f'stopped ({condition.name})')
            message = (f'mdp: {stop} before proving the optimum: objective '
                       f'{solution.objective:.6g}, upper bound {upper:.6g} ({source}), gap '
                       f'{solution.gap:.2%}')
            if self.require_optimal:
                raise SolverError(f'{message}; require_optimal=True: raise time_limit, or drop '
                                  'require_optimal to accept this solution')
            print_log(f'{message}: the structure may be that far below the best one; raise '
                      'time_limit, or set require_optimal=True to fail instead',
                      logger='current', level=logging.WARNING)
        return solution

    def _smallest_latency(self, problem: Problem, space: ChoiceSpace,
                          m: pyo.ConcreteModel) -> Solution:
        """The answer to an infeasible budget: the choice of smallest latency."""
        m.objective.deactivate()
        m.budget.deactivate()
        m.min_latency = pyo.Objective(expr=m.latency, sense=pyo.minimize)
        results = self._highs(m)
        if results.best_feasible_objective is None:
            raise SolverError('mdp: the budget is infeasible and no smallest-latency choice was '
                              f'found ({results.termination_condition.name})')
        if results.termination_condition != TerminationCondition.optimal:
            print_log('mdp: the budget is infeasible, and the smallest-latency search stopped '
                      f'({results.termination_condition.name}) before proving its minimum: the '
                      'latency reported is the smallest found, not the smallest reachable',
                      logger='current', level=logging.WARNING)
        positions, removed = read_choice(m, space)
        solution = make_solution(problem, 'infeasible', positions, removed)
        if problem.fits(solution.latency):
            # The budget sits at HiGHS's tolerance: this choice is within it after all.
            solution.status = 'feasible'
        return solution

    def _solve_mindtpy(self, problem: Problem, space: ChoiceSpace) -> Solution:
        with as_cyipopt():
            _check_mindtpy_subsolvers(self.mindtpy_options)
            m = build_model(problem, space, linearise=False)
            # GLPK and IPOPT meet the budget to their tolerances: as for the MILP, a choice still
            # over it when recomputed is solved again with the excess taken off.
            for _ in range(3):
                for var in m.component_data_objects(pyo.Var):
                    var.set_value(None)  # so that "no solution" is not read from the last try
                results = self._mindtpy(m)
                condition = results.solver.termination_condition
                if any(v.value is None for v in m.x.values()):
                    if condition == LegacyTermination.maxTimeLimit:
                        raise SolverError('mdp: MindtPy found no solution within the time limit '
                                          f'({self.time_limit:g} s); raise time_limit')
                    return self._mindtpy_infeasible(problem, space, results)
                positions, removed = read_choice(m, space)
                if _fits_or_tighten(problem, m, positions, removed, 'MindtPy'):
                    break
            else:
                raise SolverError('mdp: MindtPy keeps returning choices over the budget')
        return make_solution(problem, 'feasible', positions, removed)

    def _mindtpy(self, m: pyo.ConcreteModel):
        options = dict(self.mindtpy_options, tee=self.verbose)
        if not self.verbose:
            # MindtPy logs an infeasible fixed-integer NLP, an ordinary step of outer
            # approximation, as an ERROR with its traceback.
            options.setdefault('logging_level', logging.CRITICAL)
        if self._deadline is not None:
            options['time_limit'] = math.ceil(self._remaining())  # MindtPy takes whole seconds
        start = time.perf_counter()
        preprocessing = logging.getLogger('pyomo.contrib.preprocessing')
        level = preprocessing.level
        if not self.verbose:  # its warning that MindtPy re-applies a transformation
            preprocessing.setLevel(logging.ERROR)
        try:
            results = pyo.SolverFactory('mindtpy').solve(m, **options)
        finally:
            preprocessing.setLevel(level)
        print_log(f'mdp: MindtPy ({options["strategy"]}, {options["mip_solver"]} / '
                  f'{options["nlp_solver"]}) ended {results.solver.termination_condition} (its '
                  'verdict, not proven on this non-convex program) after '
                  f'{results.solver.iterations} iterations, {time.perf_counter() - start:.2f} s',
                  logger='current')
        return results

    def _mindtpy_infeasible(self, problem: Problem, space: ChoiceSpace, results) -> Solution:
        """No choice from MindtPy proves nothing on this non-convex program (an outer-
        approximation cut may have cut off every choice within the budget): HiGHS decides
        whether the budget is infeasible, and the answer is then the smallest latency."""
        answer = self._smallest_latency(problem, space, build_model(problem, space))
        if answer.status != 'infeasible':
            raise SolverError(f'mdp: MindtPy stopped ({results.solver.termination_condition}, '
                              f'{results.solver.iterations} iterations) with no choice within '
                              f'the budget, but one exists (latency {answer.latency:.6g} <= '
                              f"{problem.budget:.6g}); use backend 'milp'")
        return answer
