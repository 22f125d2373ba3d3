"""The solver registry and the helpers that build a solver from a config or a name."""
from mmengine.registry import Registry

# `locations` makes the registry import the solver modules on first use.
SOLVERS = Registry('solver', locations=['mmdp.solvers'])


def build_solver(cfg, **options):
    """Build a solver from a config dict (`dict(type='mdp', time_limit=10)`) or a name."""
    if isinstance(cfg, str):
        cfg = dict(type=cfg)
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise ValueError(f"solver config must be a name or a dict with 'type', found {cfg!r}")
    if cfg['type'] not in SOLVERS:
        raise KeyError(f"unknown solver {cfg['type']!r}; registered: {sorted(SOLVERS.module_dict)}")
    return SOLVERS.build({**cfg, **options})


def solve(problem, solver='mdp', **options):
    """Solve `problem` (a `Problem` or its dict) with the named solver and its options."""
    return build_solver(solver, **options).solve(problem)
