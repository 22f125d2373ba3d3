"""HALP: the latency-saliency knapsack, with every layer's input width frozen.

Each group is one item family: keeping width k is worth the summed importance of its layers at
k and costs their summed latency with the input frozen. Blocks are never removed.

Frozen input: the input group's current width (`current_widths`, default its largest width).
Widths never grow past the current ones, so the inputs the solver ends up choosing are at most
the frozen ones; a layer is charged the largest latency over the input widths it may end up
with, which is T[k][current] whenever the table grows with the input width (the published
rule) and keeps the answer within budget when a measured table does not. The recomputed
latency of the answer is therefore never above the knapsack's.

A token group (a whole-detector problem's token setting, docs/problem-format.md) is one more
item family, chosen like a width; the decoder parts that read it are priced at its frozen
current setting, as a conv is at its frozen input width, so a smaller setting is credited with
the token layer's own saving only.

Latency is discretised: a group's cost above its cheapest width is rounded UP to a multiple of
`resolution` and the budget left over is rounded DOWN, so any answer of the integer knapsack
truly fits; the price is that a choice within one `resolution` per group of the budget may be
missed.

Methods:
- `exact`: multiple-choice knapsack DP (one width per group), optimal for the integer costs.
- `greedy`: the published augmented 0/1 knapsack over chunks with the prefix rule (a chunk
  may be kept only when the best state it extends keeps all more important chunks of its
  group), negative chunk costs included as the published `_knapsack` treats them. Its answers
  fit the same integer capacity, so every greedy answer is also an answer of `exact`: greedy is
  never better.
"""
import math
from typing import Optional

import numpy as np

from .base import BaseSolver, ChoiceSpace, SolverError, make_solution
from .problem import Problem, Solution
from .registry import SOLVERS

METHODS = ('exact', 'greedy')


def knapsack_items(problem: Problem, space: ChoiceSpace, current: dict) -> tuple:
    """Per group: the values and frozen-input costs of its allowed positions, in order."""
    values = {g: np.zeros(len(ks)) for g, ks in space.allowed.items()}
    costs = {g: np.zeros(len(ks)) for g, ks in space.allowed.items()}
    for layer in problem.layers:
        ks = space.allowed[layer.group]
        values[layer.group] += layer.importance[ks]
        if layer.input_group is None:
            costs[layer.group] += layer.latency[ks]
        else:
            inputs = [j for j in space.allowed[layer.input_group]
                      if j <= current[layer.input_group]]
            costs[layer.group] += layer.latency[np.ix_(ks, inputs)].max(axis=1)
    return values, costs


def exact_mckp(values: list, costs: list, capacity: int) -> Optional[list]:
    """The best choice (one position per family) with total integer cost <= capacity."""
    best = np.zeros(capacity + 1)  # best[c]: best value of the families so far within cost c
    picks = []
    for v, w in zip(values, costs):
        new = np.full(capacity + 1, -np.inf)
        pick = np.zeros(capacity + 1, dtype=np.int32)
        for k in range(len(v)):
            if w[k] > capacity:
                continue
            cand = np.full(capacity + 1, -np.inf)
            cand[w[k]:] = best[:capacity + 1 - w[k]] + v[k]
            better = cand > new
            new[better], pick[better] = cand[better], k
        best = new
        picks.append(pick)
    if not np.isfinite(best[capacity]):
        return None
    choice, c = [], capacity
    for w, pick in zip(reversed(costs), reversed(picks)):
        k = int(pick[c])
        choice.append(k)
        c -= w[k]
    return choice[::-1]


def greedy_augmented(values: list, costs: list, capacity: int,
                     max_states: Optional[int] = None) -> Optional[list]:
    """The published augmented knapsack DP over chunks with the prefix rule (HALP's
    `_knapsack`, with the first chunk of every family kept).

    Family f's chunk n (n >= 1) is worth values[f][n] - values[f][n - 1] and costs
    costs[f][n] - costs[f][n - 1], which is negative where a wider choice is cheaper (a measured
    table is not monotone); position 0 is always kept. As in the published DP: when every chunk
    fits, all are kept; the state table reaches past the capacity by the sum of the negative
    costs, so that a state over it may come back under it through a later negative chunk; a
    chunk is taken where it raises the value, or keeps it with zero cost. One state per
    capacity: a chunk extends the state at c - cost only if that state keeps exactly the n - 1
    chunks before it. After family f, the state at c is the state at c - (costs[f][n] -
    costs[f][0]) after family f - 1 plus n chunks, which is what the walk back relies on.
    `max_states`: refuse (SolverError) a table longer than this.
    """
    capacity -= sum(int(w[0]) for w in costs)
    if capacity < 0:
        return None
    gains = [np.diff(np.asarray(v, dtype=float)) for v in values]
    steps = [np.diff(np.asarray(w, dtype=np.int64)) for w in costs]
    if capacity >= sum(int(s.sum()) for s in steps):
        return [len(v) - 1 for v in values]
    top = capacity + sum(int(-s[s < 0].sum()) for s in steps)
    if max_states is not None and top + 1 > max_states:
        raise SolverError(f'halp: the greedy table needs {top + 1} states (capacity {capacity} '
                          f'plus {top - capacity} for negative chunk costs), more than '
                          f'max_bins={max_states}; raise resolution or use method=\'exact\'')
    best = np.zeros(top + 1)
    counts = []
    for gain, step in zip(gains, steps):
        count = np.zeros(top + 1, dtype=np.int32)
        for n, (dv, w) in enumerate(zip(gain, step.tolist()), start=1):
            lo, hi = max(w, 0), top + min(w, 0)  # states c whose source c - w is in the table
            if lo > hi:
                break  # taken nowhere, so no later chunk of the family can be either
            src, dst = slice(lo - w, hi - w + 1), slice(lo, hi + 1)
            cand, old = best[src] + dv, best[dst]
            extend = (count[src] == n - 1) & ((cand > old) | ((cand == old) & (w == 0)))
            # Both sides read the pre-chunk state, as the published two-row table does.
            best[dst] = np.where(extend, cand, old)
            count[dst] = np.where(extend, n, count[dst])
        counts.append(count)
    choice, c = [], capacity
    for step, count in zip(reversed(steps), reversed(counts)):
        n = int(count[c])
        choice.append(n)
        c -= int(step[:n].sum())
    return choice[::-1]


@SOLVERS.register_module(name='halp')
class HALPSolver(BaseSolver):
    """HALP's knapsack (see the module doc).

    Args:
        method: 'exact' (multiple-choice knapsack DP) or 'greedy' (the published DP).
        current_widths: {group: current width} for the iterative schedule: inputs are frozen
            there and widths do not grow past it. Default: every group's largest width.
        steps: 1 solves once. N > 1 replays HALP's iterative schedule offline (importance
            fixed): budgets fall geometrically from the latency at the current widths to the
            budget in N steps, each freezing the inputs at the previous step's widths.
        resolution: latency per knapsack unit; default: the budget left above the cheapest
            choice divided by `bins`.
        bins: knapsack units of the budget when `resolution` is not given.
        max_bins: refuse a `resolution` that needs more units than this.
        min_widths: {group: smallest width allowed}.
    """
    name = 'halp'

    def __init__(self, method: str = 'exact', current_widths: Optional[dict] = None,
                 steps: int = 1, resolution: Optional[float] = None, bins: int = 20_000,
                 max_bins: int = 2_000_000, min_widths: Optional[dict] = None):
        super().__init__(min_widths)
        if method not in METHODS:
            raise ValueError(f'halp: method {method!r} is not one of {METHODS}')
        if int(steps) < 1:
            raise ValueError(f'halp: steps must be >= 1, found {steps}')
        if resolution is not None and not resolution > 0:
            raise ValueError(f'halp: resolution must be positive, found {resolution}')
        if int(bins) < 1:
            raise ValueError(f'halp: bins must be >= 1, found {bins}')
        self.method = method
        self.current_widths = dict(current_widths or {})
        self.steps = int(steps)
        self.resolution = resolution
        self.bins = int(bins)
        self.max_bins = int(max_bins)

    def choice_space(self, problem: Problem) -> ChoiceSpace:
        problem.indices({**{g: ws[-1] for g, ws in problem.groups.items()},
                         **self.current_widths})  # every current width must be allowed
        return ChoiceSpace.build(problem, min_widths=self.min_widths,
                                 max_widths=self.current_widths, removable_blocks=[])

    def _solve(self, problem: Problem, space: ChoiceSpace) -> Solution:
        current = {g: max(ks) for g, ks in space.allowed.items()}
        budgets = [problem.budget]
        start = problem.evaluate({g: problem.groups[g][k] for g, k in current.items()})[1]
        if self.steps > 1 and 0 < problem.budget < start:
            ratio = problem.budget / start
            budgets = [start * ratio ** (s / self.steps) for s in range(1, self.steps)] + budgets
        for budget in budgets:
            step = ChoiceSpace({g: [k for k in ks if k <= current[g]]
                                for g, ks in space.allowed.items()}, [])
            positions, cheapest = self._knapsack(problem, step, current, budget)
            if positions is None:
                return self._fallback(problem, cheapest)
            current = positions
        # Optimal only for HALP's own frozen-input, discretised knapsack, not for the problem.
        return make_solution(problem, 'feasible', current)

    def _knapsack(self, problem: Problem, space: ChoiceSpace, current: dict,
                  budget: float) -> tuple:
        """(positions or None when nothing fits, the cheapest positions) for one budget."""
        groups = list(space.allowed)
        values, costs = knapsack_items(problem, space, current)
        cheapest = {g: space.allowed[g][int(np.argmin(costs[g]))] for g in groups}
        slack = budget - sum(float(costs[g].min()) for g in groups)
        if slack < 0:
            return None, cheapest
        resolution = self.resolution or (slack / self.bins if slack > 0 else 1.0)
        capacity = math.floor(slack / resolution)
        if capacity > self.max_bins:
            raise SolverError(f'halp: resolution {resolution:g} cuts the budget into {capacity} '
                              f'units, more than max_bins={self.max_bins}; raise resolution')
        # Round the costs above each group's cheapest width UP: the integer answer truly fits.
        units = [np.ceil((costs[g] - costs[g].min()) / resolution).astype(np.int64)
                 for g in groups]
        if self.method == 'exact':
            choice = exact_mckp([values[g] for g in groups], units, capacity)
        else:
            choice = greedy_augmented([values[g] for g in groups], units, capacity,
                                      max_states=self.max_bins)
        if choice is None:
            return None, cheapest
        return {g: space.allowed[g][n] for g, n in zip(groups, choice)}, cheapest

    @staticmethod
    def _fallback(problem: Problem, cheapest: dict) -> Solution:
        """No choice fits the knapsack: its cheapest choice, feasible if its recomputed
        latency (inputs shrunk too) fits after all, else the smallest latency HALP reaches."""
        solution = make_solution(problem, 'infeasible', cheapest)
        if problem.fits(solution.latency):
            solution.status = 'feasible'
        return solution
