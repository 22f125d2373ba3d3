"""Exhaustive enumeration of every width and block choice: the reference for tiny problems."""
import itertools
from typing import Optional

import numpy as np

from .base import BaseSolver, ChoiceSpace, SolverError, make_solution
from .problem import FIT_RTOL, Problem, Solution
from .registry import SOLVERS


@SOLVERS.register_module(name='exhaustive')
class ExhaustiveSolver(BaseSolver):
    """Scores every combination at once with numpy; refuses more than `max_combinations`."""
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
        grids = np.meshgrid(*[np.asarray(space.allowed[g]) for g in groups], indexing='ij')
        choices = np.stack([grid.ravel() for grid in grids], axis=1)  # (n_widths, n_groups)
        # Column 0 sums the layers that are always kept, column 1 + i those of removable block i.
        slot = {b: i + 1 for i, b in enumerate(space.removable)}
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
        keep = np.array([(1, *bits) for bits in
                         itertools.product((1, 0), repeat=len(space.removable))], dtype=float)
        objective, total = value @ keep.T, latency @ keep.T  # (n_widths, n_block_choices)
        fits = total <= problem.budget + FIT_RTOL * max(1.0, abs(problem.budget))
        if fits.any():
            # Best objective; among ties the smallest latency.
            order = np.lexsort((total.ravel(), -np.where(fits, objective, -np.inf).ravel()))
            status = 'optimal'
        else:
            order = np.lexsort((-objective.ravel(), total.ravel()))
            status = 'infeasible'
        w, b = np.unravel_index(order[0], total.shape)
        positions = {g: int(choices[w, column[g]]) for g in groups}
        removed = [blk for blk, bit in zip(space.removable, keep[b, 1:]) if bit == 0]
        return make_solution(problem, status, positions, removed,
                             gap=0.0 if status == 'optimal' else None)
