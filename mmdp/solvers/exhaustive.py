"""Exhaustive enumeration of every width and block choice: the reference for tiny problems."""
import itertools
from typing import Optional

import numpy as np

from .base import BaseSolver, ChoiceSpace, SolverError, make_solution
from .problem import FIT_RTOL, Problem, Solution
from .registry import SOLVERS

# Width combinations scored at once; the enumeration walks them in slices of this many.
CHUNK = 4096


def width_combinations(radices: list, start: int, stop: int) -> np.ndarray:
    """Combinations start..stop-1 of a mixed-radix count over the groups (the last group
    varies fastest), as (stop - start, len(radices)) digit positions."""
    index = np.arange(start, stop, dtype=np.int64)
    digits = np.empty((len(index), len(radices)), dtype=np.int64)
    for i in range(len(radices) - 1, -1, -1):
        index, digits[:, i] = np.divmod(index, radices[i])
    return digits


@SOLVERS.register_module(name='exhaustive')
class ExhaustiveSolver(BaseSolver):
    """Scores every combination with numpy, in slices; refuses more than `max_combinations`.
    The answer is the first best one in enumeration order (largest objective, then smallest
    latency), so it does not depend on the slicing."""
    name = 'exhaustive'

    def __init__(self, max_combinations: int = 200_000, min_widths: Optional[dict] = None,
                 removable_blocks: Optional[list] = None):
        super().__init__(min_widths)
        self.max_combinations = int(max_combinations)
        self.removable_blocks = removable_blocks

    def choice_space(self, problem: Problem) -> ChoiceSpace:
        return ChoiceSpace.build(problem, min_widths=self.min_widths,
                                 removable_blocks=self.removable_blocks)

    def _solve(self, problem: Problem, space: ChoiceSpace) -> Solution:
        size = space.size()
        if size > self.max_combinations:
            raise SolverError(f'exhaustive: the problem has {size} width/block combinations, '
                              f'more than max_combinations={self.max_combinations}; use the '
                              "'mdp' solver or raise max_combinations")
        groups = list(problem.groups)
        column = {g: i for i, g in enumerate(groups)}
        allowed = [np.asarray(space.allowed[g]) for g in groups]
        radices = [len(a) for a in allowed]
        # Column 0 of a block choice is the always-kept layers, column 1 + i removable block i.
        slot = {b: i + 1 for i, b in enumerate(space.removable)}
        keep = np.array([(1, *bits) for bits in
                         itertools.product((1, 0), repeat=len(space.removable))], dtype=float)
        n_widths = size // len(keep)
        best = None  # (feasible, objective or -latency, -latency or objective, position)
        for start in range(0, n_widths, CHUNK):
            digits = width_combinations(radices, start, min(start + CHUNK, n_widths))
            choices = np.stack([allowed[i][digits[:, i]] for i in range(len(groups))], axis=1)
            value = np.zeros((len(choices), len(slot) + 1))
            latency = np.zeros_like(value)
            for layer in problem.layers:
                k = choices[:, column[layer.group]]
                s = slot.get(layer.block, 0)
                value[:, s] += layer.importance[k]
                if layer.input_group is None:
                    latency[:, s] += layer.latency[k]
                else:
                    latency[:, s] += layer.latency[k, choices[:, column[layer.input_group]]]
            objective, total = value @ keep.T, latency @ keep.T  # (widths, block choices)
            fits = total <= problem.budget + FIT_RTOL * max(1.0, abs(problem.budget))
            if fits.any():
                # Best objective; among ties the smallest latency; then the first.
                order = np.lexsort((total.ravel(), -np.where(fits, objective, -np.inf).ravel()))
            else:
                order = np.lexsort((-objective.ravel(), total.ravel()))
            w, b = np.unravel_index(order[0], total.shape)
            o, t = float(objective[w, b]), float(total[w, b])
            key = (bool(fits[w, b]), o, -t) if fits.any() else (False, -t, o)
            if best is None or key > best[0]:
                best = (key, choices[w], b)
        (feasible, _, _), choice, b = best
        positions = {g: int(choice[column[g]]) for g in groups}
        removed = [blk for blk, bit in zip(space.removable, keep[b, 1:]) if bit == 0]
        status = 'optimal' if feasible else 'infeasible'
        return make_solution(problem, status, positions, removed,
                             gap=0.0 if status == 'optimal' else None)
