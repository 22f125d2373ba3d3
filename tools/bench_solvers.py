"""Time the pruning solvers on synthetic ResNet-shaped problems and print a table.

    python tools/bench_solvers.py                        # ResNet-18..152, chunks 8/16/32
    python tools/bench_solvers.py --quick                # ResNet-50 and -101, 32-channel chunks
    python tools/bench_solvers.py --depths 50 --chunks 32 --blocks on --time-limit 60
    python tools/bench_solvers.py --whole --quick --solvers mdp  # whole StreamPETR-R50, chunk 32
    python tools/bench_solvers.py --quick --solvers mdp mindtpy halp-exact --time-limit 300

Problems: mmdp.solvers.synthetic.resnet_problem (budget 55% of dense by default), with every
block removable ('on') or none ('off'); with `--whole`, mmdp.solvers.synthetic.
whole_detector_problem: the backbone with the neck's lateral convs and StreamPETR's head
(position encoder width, per decoder layer FFN width, self/cross-attention heads, removable
layers) in one version-2 problem, every block and decoder layer removable. Solvers: HALP exact and greedy (one shot, inputs frozen
at the dense widths), HALP exact replaying its 30-step schedule offline, MDP (MILP, HiGHS) and
MDP's MindtPy backend (outer approximation, GLPK / IPOPT: `make install-mindtpy`). `opt_ratio` is
the objective over MDP's proven optimum (when `mdp` ran and proved it). `seconds` is wall time
(model building included), `cpu_s` the CPU time of the process and its sub-processes (GLPK runs
as one), which is what to compare when other jobs share the cores. A solver that fails prints its
error under a row of status `error`.
"""
import argparse
import json
import os
import time

from mmengine.logging import MMLogger
from tqdm import tqdm

from mmdp.solvers import SolverError, build_solver
from mmdp.solvers.mdp import build_model
from mmdp.solvers.synthetic import RESNETS, resnet_problem, whole_detector_problem

SOLVERS = {
    'halp-exact': dict(type='halp', method='exact'),
    'halp-greedy': dict(type='halp', method='greedy'),
    'halp-30steps': dict(type='halp', method='exact', steps=30),
    'mdp': dict(type='mdp'),
    'mindtpy': dict(type='mdp', backend='mindtpy'),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--depths', type=int, nargs='+', default=sorted(RESNETS))
    parser.add_argument('--chunks', type=int, nargs='+', default=[8, 16, 32])
    parser.add_argument('--blocks', choices=['on', 'off', 'both'], default='both',
                        help='removable blocks: all ("on"), none ("off") or both')
    parser.add_argument('--solvers', nargs='+', choices=sorted(SOLVERS), default=list(SOLVERS))
    parser.add_argument('--budget-ratio', type=float, default=0.55)
    parser.add_argument('--time-limit', type=float, default=120.0,
                        help='seconds per MDP solve (mdp and mindtpy)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--quick', action='store_true',
                        help='only ResNet-50 and ResNet-101 with 32-channel chunks')
    parser.add_argument('--whole', action='store_true',
                        help='whole-detector StreamPETR problems (backbone, neck and head)')
    parser.add_argument('--save-problems', help='folder to save each problem JSON into')
    parser.add_argument('--out', help='write the rows as JSON lines here')
    return parser.parse_args(argv)


def format_row(row: dict) -> str:
    gap = '-' if row['gap'] is None else f"{row['gap']:.1e}"
    ratio = '-' if row['opt_ratio'] is None else f"{row['opt_ratio']:.4f}"
    numbers = ('' if row['objective'] is None else
               f"{row['objective']:>12.1f}{row['latency']:>9.4f}{row['removed']:>8}")
    return (f"{row['problem']:<11}{row['chunk']:>6}{row['blocks']:>7}{row['groups']:>7}"
            f"{row['layers']:>7}{row['milp_vars']:>10}  {row['solver']:<13}{row['status']:<11}"
            f"{numbers:>29}{ratio:>10}{gap:>9}{row['seconds']:>9.2f}{row['cpu_seconds']:>9.2f}")


def cpu_time() -> float:
    """CPU seconds of this process and of its finished sub-processes (MindtPy's glpsol)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def optimum(rows: list) -> float:
    """MDP's objective on this problem when it proved it optimal, else None."""
    for row in rows:
        if row['solver'] == 'mdp' and row['status'] == 'optimal':
            return row['objective']
    return None


def main(argv=None):
    args = parse_args(argv)
    MMLogger.get_instance('mmdp-bench', log_level='WARNING')  # keep the solvers' logs quiet
    if args.quick:
        args.depths, args.chunks = [50, 101], [32]
    block_modes = {'on': [True], 'off': [False], 'both': [True, False]}[args.blocks]
    if args.whole:
        args.depths = [d for d in args.depths if RESNETS[d][0]]  # bottleneck ResNets
        block_modes = [True]
    cases = [(d, c, b) for d in args.depths for c in args.chunks for b in block_modes]
    header = (f"{'problem':<11}{'chunk':>6}{'blocks':>7}{'groups':>7}{'layers':>7}"
              f"{'milp_vars':>10}  {'solver':<13}{'status':<11}{'objective':>12}"
              f"{'latency':>9}{'removed':>8}{'opt_ratio':>10}{'gap':>9}{'seconds':>9}"
              f"{'cpu_s':>9}")
    print(header)
    print('-' * len(header))
    rows = []
    for depth, chunk, blocks in tqdm(cases, desc='problems', leave=False, disable=None):
        if args.whole:
            problem = whole_detector_problem(depth, chunk, args.budget_ratio, seed=args.seed)
            name = f'spetr-r{depth}'
        else:
            problem = resnet_problem(depth, chunk, blocks, args.budget_ratio, seed=args.seed)
            name = f'resnet{depth}'
        if args.save_problems:
            problem.save(os.path.join(args.save_problems,
                                      f'{name}_c{chunk}_{"blocks" if blocks else "noblocks"}.json'))
        space = build_solver('mdp').choice_space(problem)
        n_vars = build_model(problem, space).nvariables()
        problem_rows = []
        for label in args.solvers:
            cfg = dict(SOLVERS[label])
            if cfg['type'] == 'mdp':
                cfg['time_limit'] = args.time_limit
            row = dict(problem=name, chunk=chunk, blocks='all' if blocks else 'none',
                       groups=len(problem.groups), layers=len(problem.layers),
                       milp_vars=n_vars, solver=label, budget=problem.budget, error=None)
            start, cpu = time.perf_counter(), cpu_time()
            try:
                solution = build_solver(cfg).solve(problem)
            except SolverError as e:
                row.update(status='error', objective=None, latency=None, removed=None, gap=None,
                           error=str(e))
            else:
                row.update(status=solution.status, objective=solution.objective,
                           latency=solution.latency, removed=len(solution.removed_blocks),
                           gap=solution.gap)
            row.update(seconds=time.perf_counter() - start,
                       cpu_seconds=cpu_time() - cpu)
            problem_rows.append(row)
        best = optimum(problem_rows)  # known once every solver ran: the rows print together
        for row in problem_rows:
            row['opt_ratio'] = (None if best is None or row['objective'] is None
                                else row['objective'] / best)
            tqdm.write(format_row(row))
            if row['error']:
                tqdm.write(f"    {row['solver']}: {row['error']}")
        rows += problem_rows
    if args.out:
        with open(args.out, 'w') as f:
            f.writelines(json.dumps(row) + '\n' for row in rows)


if __name__ == '__main__':
    main()
