"""Solve a saved pruning problem (docs/problem-format.md) offline.

    python tools/solve.py PROBLEM.json --solver mdp|halp|exhaustive [--time-limit S] [--gap G]
        [--options method=greedy ...] --out SOLUTION.json

Exit status: 0 solved, 1 the budget is infeasible (the solution file still records the
smallest latency reachable), 2 bad input (problem file or options), 3 the solver failed.
"""
import argparse
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

from mmengine.config import DictAction  # noqa: E402
from mmengine.logging import MMLogger, print_log  # noqa: E402

from mmdp.cli import check_writable, entry  # noqa: E402
from mmdp.solvers import Problem, ProblemError, SolverError, build_solver  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Solve a pruning problem JSON file.')
    parser.add_argument('problem', help='the problem JSON file')
    parser.add_argument('--solver', default='mdp', help="'mdp', 'halp' or 'exhaustive'")
    parser.add_argument('--time-limit', type=float, help='seconds (mdp)')
    parser.add_argument('--gap', type=float, help='relative MIP gap to stop at (mdp)')
    parser.add_argument('--require-optimal', action='store_true',
                        help='fail (exit 3) instead of returning a solution not proven optimal (mdp)')
    parser.add_argument('--options', nargs='+', action=DictAction, default={},
                        help='further solver options, e.g. method=greedy steps=30 (halp)')
    parser.add_argument('--out', required=True, help='where to write the solution JSON')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_writable(osp.dirname(osp.abspath(args.out)), '--out folder')
    MMLogger.get_instance('mmdp-solve', log_level='INFO')
    options = dict(args.options)
    if args.time_limit is not None:
        options['time_limit'] = args.time_limit
    if args.gap is not None:
        options['mip_rel_gap'] = args.gap
    if args.require_optimal:
        options['require_optimal'] = True
    try:
        problem = Problem.load(args.problem)
        solver = build_solver(args.solver, **options)
    except (ProblemError, KeyError, TypeError, ValueError) as e:
        print(f'error: {e.args[0] if isinstance(e, KeyError) else e}', file=sys.stderr)
        return 2
    print_log(f'{args.problem}: {problem!r}, solver {args.solver} {options or ""}',
              logger='current')
    try:
        solution = solver.solve(problem)
    except (ProblemError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except SolverError as e:
        print(f'error: {e}', file=sys.stderr)
        return 3
    solution.save(args.out)
    print_log(f'wrote {args.out}', logger='current')
    if solution.status == 'infeasible':
        print(f'error: infeasible: no choice fits the budget {problem.budget:.6g}; the smallest '
              f'latency reachable is {solution.latency:.6g}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    entry(__file__, main)
