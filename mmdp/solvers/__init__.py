"""Pruning solvers behind the problem format of docs/problem-format.md.

`SOLVERS` holds 'mdp' (exact MILP via HiGHS, or MindtPy), 'halp' (frozen-input knapsack) and
'exhaustive' (enumeration for tiny problems); every solver takes a `Problem` (or its dict) and
returns a `Solution` recomputed by `Problem.evaluate`.
"""
from .base import BaseSolver, ChoiceSpace, SolverError
from .exhaustive import ExhaustiveSolver
from .halp import HALPSolver
from .mdp import MDPSolver
from .problem import Problem, ProblemError, Solution
from .registry import SOLVERS, build_solver, solve

__all__ = [
    'SOLVERS', 'build_solver', 'solve', 'Problem', 'ProblemError', 'Solution', 'SolverError',
    'BaseSolver', 'ChoiceSpace', 'MDPSolver', 'HALPSolver', 'ExhaustiveSolver',
]
