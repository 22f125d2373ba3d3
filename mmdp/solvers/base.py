"""What every solver shares: the options that restrict the choice, timing, logging and the
recomputation of the answer from the problem's own tables."""
import time
from dataclasses import dataclass
from typing import Optional

from mmengine.logging import print_log

from .problem import Problem, ProblemError, Solution


class SolverError(RuntimeError):
    """A solver that could not produce an answer (missing sub-solver, no solution in time)."""


@dataclass
class ChoiceSpace:
    """The choices a solver may make: allowed width positions per group, removable blocks."""
    allowed: dict  # group -> ascending list of width positions
    removable: list

    @classmethod
    def build(cls, problem: Problem, min_widths: Optional[dict] = None,
              max_widths: Optional[dict] = None, removable_blocks=None) -> 'ChoiceSpace':
        min_widths, max_widths = min_widths or {}, max_widths or {}
        for option, values in (('min_widths', min_widths), ('max_widths', max_widths)):
            unknown = [g for g in values if g not in problem.groups]
            if unknown:
                raise ProblemError(f'{option}: unknown group {unknown[0]!r}')
        allowed = {}
        for g, widths in problem.groups.items():
            lo, hi = min_widths.get(g, widths[0]), max_widths.get(g, widths[-1])
            allowed[g] = [k for k, w in enumerate(widths) if lo <= w <= hi]
            if not allowed[g]:
                raise ProblemError(f"group '{g}': no width in {widths} lies in [{lo}, {hi}] "
                                   '(min_widths / max_widths)')
        if removable_blocks is None:
            removable = list(problem.blocks)
        else:
            removable = list(removable_blocks)
            problem.check_removed(removable)
        return cls(allowed, removable)

    def size(self) -> int:
        n = 2 ** len(self.removable)
        for ks in self.allowed.values():
            n *= len(ks)
        return n


class BaseSolver:
    """Solves a `Problem`; subclasses implement `_solve(problem, space)`.

    Options shared by all solvers: `min_widths` {group: smallest width allowed} and, where the
    solver removes blocks, `removable_blocks` (a subset of the problem's `blocks`).
    """
    name = 'base'

    def __init__(self, min_widths: Optional[dict] = None):
        self.min_widths = dict(min_widths or {})

    def choice_space(self, problem: Problem) -> ChoiceSpace:
        return ChoiceSpace.build(problem, min_widths=self.min_widths)

    def solve(self, problem) -> Solution:
        if not isinstance(problem, Problem):
            problem = Problem.from_dict(problem)
        start = time.perf_counter()
        solution = self._solve(problem, self.choice_space(problem))
        solution.seconds = time.perf_counter() - start
        gap = '' if solution.gap is None else f', gap {solution.gap:.2e}'
        print_log(f'{self.name}: {solution.status}, objective {solution.objective:.6g}, latency '
                  f'{solution.latency:.6g} (budget {problem.budget:.6g}), '
                  f'{len(solution.removed_blocks)} blocks removed{gap}, '
                  f'{solution.seconds:.2f} s', logger='current')
        return solution

    def _solve(self, problem: Problem, space: ChoiceSpace) -> Solution:
        raise NotImplementedError


def make_solution(problem: Problem, status: str, positions: dict, removed=(),
                  gap: Optional[float] = None) -> Solution:
    """A `Solution` for width positions {group: k} and removed blocks, recomputed by
    `Problem.evaluate`; a feasible status whose latency does not fit is a solver bug."""
    widths = {g: problem.groups[g][k] for g, k in positions.items()}
    removed = [b for b in problem.blocks if b in set(removed)]
    objective, latency = problem.evaluate(widths, removed)
    if status != 'infeasible' and not problem.fits(latency):
        raise SolverError(f'{status} solution has latency {latency:.9g} over the budget '
                          f'{problem.budget:.9g}')
    return Solution(status, objective, latency, widths, removed, gap)
