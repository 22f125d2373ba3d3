"""IPOPT through cyipopt on Pyomo models of at most quadratic constraints and objective: the NLP
sub-solver of the mdp backend 'mindtpy'.

Pyomo's own 'cyipopt' interface evaluates functions and derivatives through PyNumero's ASL
library, which no package registry ships (Pyomo builds it from a download), and Debian ships no
AMPL `ipopt` executable. MindtPy's subproblems of the MDP program are quadratic (the latency is
bilinear in the width one-hots), so this interface reads each expression's quadratic form
(`generate_standard_repn`) and computes values, the Jacobian and the Lagrangian's Hessian from it.
It offers what MindtPy drives for nlp_solver='cyipopt': IPOPT options in `config.options`, and
`solve(model, tee, load_solutions)` that loads the point (and the 'dual' suffix, IPOPT's
multipliers as Pyomo's interface gives them) into the model.
"""
import contextlib
import time
from types import SimpleNamespace

import numpy as np
import pyomo.environ as pyo
from pyomo.opt import SolverFactory, SolverResults, SolverStatus, TerminationCondition
from pyomo.core.base.suffix import active_import_suffix_generator
from pyomo.repn import generate_standard_repn

try:
    import cyipopt
except ImportError:  # the backend's sub-solver check names how to install it
    cyipopt = None

# IPOPT's return codes (IpReturnCodes_inc.h) as Pyomo's ipopt interfaces read them.
TERMINATION = {
    0: TerminationCondition.optimal, 1: TerminationCondition.feasible,
    2: TerminationCondition.infeasible, 3: TerminationCondition.minStepLength,
    4: TerminationCondition.unbounded, 5: TerminationCondition.userInterrupt,
    6: TerminationCondition.feasible, -1: TerminationCondition.maxIterations,
    -2: TerminationCondition.noSolution, -3: TerminationCondition.solverFailure,
    -4: TerminationCondition.maxTimeLimit, -10: TerminationCondition.invalidProblem,
    -11: TerminationCondition.invalidProblem, -12: TerminationCondition.error,
    -13: TerminationCondition.internalSolverError,
}
INFINITY = 1e20  # IPOPT reads bounds beyond +-1e19 as none


class QuadraticForms:
    """f_i(x) = c_i + a_i.x + sum_t q_t x[u_t] x[v_t] for the objective (row 0) and every
    constraint (rows 1..m), over the model's free variables."""

    def __init__(self, expressions: list, names: list):
        self.variables, index = [], {}

        def column(var):
            if id(var) not in index:
                index[id(var)] = len(self.variables)
                self.variables.append(var)
            return index[id(var)]

        self.constant = np.zeros(len(expressions))
        lin, quad = ([], [], []), ([], [], [], [])
        for row, (expr, name) in enumerate(zip(expressions, names)):
            repn = generate_standard_repn(expr, quadratic=True, compute_values=True)
            if repn.nonlinear_expr is not None:
                raise ValueError(f'quadratic_ipopt: {name} is not quadratic (degree '
                                 f'{expr.polynomial_degree()}); this interface takes linear '
                                 'and quadratic expressions only')
            self.constant[row] = pyo.value(repn.constant)
            for coef, var in zip(repn.linear_coefs, repn.linear_vars):
                for seq, item in zip(lin, (row, column(var), coef)):
                    seq.append(item)
            for coef, (u, v) in zip(repn.quadratic_coefs, repn.quadratic_vars):
                for seq, item in zip(quad, (row, column(u), column(v), coef)):
                    seq.append(item)
        self.n = len(self.variables)
        self.lin_row, self.lin_col = np.array(lin[0], int), np.array(lin[1], int)
        self.lin_coef = np.array(lin[2], float)
        self.q_row, self.q_u, self.q_v = (np.array(a, int) for a in quad[:3])
        self.q_coef = np.array(quad[3], float)
        # Jacobian entries: each linear term, and d/du = q x[v], d/dv = q x[u] of each product,
        # summed into the distinct (row, column) positions.
        rows = np.concatenate([self.lin_row, self.q_row, self.q_row])
        cols = np.concatenate([self.lin_col, self.q_u, self.q_v])
        self.jac_keys, self.jac_slot = np.unique(rows * max(self.n, 1) + cols,
                                                 return_inverse=True)
        # Hessian of each product: q at (max(u, v), min(u, v)), 2q on the diagonal.
        hi, lo = np.maximum(self.q_u, self.q_v), np.minimum(self.q_u, self.q_v)
        self.hess_value = np.where(hi == lo, 2.0, 1.0) * self.q_coef
        self.hess_keys, self.hess_slot = np.unique(hi * max(self.n, 1) + lo,
                                                   return_inverse=True)

    def values(self, x: np.ndarray) -> np.ndarray:
        out = self.constant.copy()
        np.add.at(out, self.lin_row, self.lin_coef * x[self.lin_col])
        np.add.at(out, self.q_row, self.q_coef * x[self.q_u] * x[self.q_v])
        return out

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """Values at the positions `jac_keys` (row * n + column), row 0 the objective."""
        terms = np.concatenate([self.lin_coef, self.q_coef * x[self.q_v],
                                self.q_coef * x[self.q_u]])
        return np.bincount(self.jac_slot, weights=terms, minlength=len(self.jac_keys))

    def hessian(self, weights: np.ndarray) -> np.ndarray:
        """sum_i weights[i] * Hessian(f_i), lower triangle at the positions `hess_keys`."""
        return np.bincount(self.hess_slot, weights=self.hess_value * weights[self.q_row],
                           minlength=len(self.hess_keys))


class _Problem:
    """cyipopt's callbacks over the constraint rows 1..m of `QuadraticForms`."""

    def __init__(self, forms: QuadraticForms, sign: float):
        self.forms, self.sign, n = forms, sign, max(forms.n, 1)
        objective = forms.jac_keys < n
        self._obj_cols = forms.jac_keys[objective]
        self._con = ~objective
        self._jac_rows = forms.jac_keys[self._con] // n - 1
        self._jac_cols = forms.jac_keys[self._con] % n

    def objective(self, x):
        return self.sign * self.forms.values(x)[0]

    def gradient(self, x):
        grad = np.zeros(self.forms.n)
        grad[self._obj_cols] = self.forms.jacobian(x)[~self._con]
        return self.sign * grad

    def constraints(self, x):
        return self.forms.values(x)[1:]

    def jacobianstructure(self):
        return self._jac_rows, self._jac_cols

    def jacobian(self, x):
        return self.forms.jacobian(x)[self._con]

    def hessianstructure(self):
        n = max(self.forms.n, 1)
        return self.forms.hess_keys // n, self.forms.hess_keys % n

    def hessian(self, x, multipliers, obj_factor):
        return self.forms.hessian(np.concatenate([[self.sign * obj_factor], multipliers]))


class QuadraticIpopt:
    """A Pyomo solver (the legacy `solve` interface) running IPOPT through cyipopt."""

    def __init__(self, **kwds):
        self.config = SimpleNamespace(options=dict(kwds.get('options', {})))

    def available(self, exception_flag=False) -> bool:
        return cyipopt is not None

    def license_is_valid(self) -> bool:
        return True

    def version(self) -> tuple:
        return tuple(cyipopt.IPOPT_VERSION)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def solve(self, model, tee: bool = False, load_solutions: bool = True,
              options: dict = None):
        options = dict(self.config.options, **(options or {}))
        objectives = list(model.component_data_objects(pyo.Objective, active=True))
        if len(objectives) != 1:
            raise ValueError(f'quadratic_ipopt: the model has {len(objectives)} active '
                             'objectives, expected 1')
        constraints = list(model.component_data_objects(pyo.Constraint, active=True))
        forms = QuadraticForms([objectives[0].expr] + [c.body for c in constraints],
                               [f'objective {objectives[0].name}']
                               + [f'constraint {c.name}' for c in constraints])
        sign = 1.0 if objectives[0].sense == pyo.minimize else -1.0
        cl = np.array([-INFINITY if c.lower is None else pyo.value(c.lower) for c in constraints])
        cu = np.array([INFINITY if c.upper is None else pyo.value(c.upper) for c in constraints])
        lb = np.array([-INFINITY if v.lb is None else v.lb for v in forms.variables])
        ub = np.array([INFINITY if v.ub is None else v.ub for v in forms.variables])
        x0 = np.clip([0.0 if v.value is None else float(v.value) for v in forms.variables],
                     lb, ub)
        start = time.perf_counter()
        if forms.n == 0:  # every variable fixed: the point is given, only its feasibility is not
            x, g = x0, forms.values(x0)[1:]
            tol = options.get('constr_viol_tol', 1e-4)
            status = 0 if np.all((g >= cl - tol) & (g <= cu + tol)) else 2
            info = dict(status=status, x=x, obj_val=sign * forms.values(x)[0],
                        mult_g=np.zeros(len(constraints)), mult_x_L=x0, mult_x_U=x0,
                        status_msg=b'no free variable')
        else:
            problem = cyipopt.Problem(n=forms.n, m=len(constraints),
                                      problem_obj=_Problem(forms, sign),
                                      lb=lb, ub=ub, cl=cl, cu=cu)
            problem.add_option('sb', 'yes')  # no banner
            problem.add_option('print_level', 5 if tee else 0)
            for key, value in options.items():
                problem.add_option(key, value)
            x, info = problem.solve(x0)
            problem.close()
        results = SolverResults()
        condition = TERMINATION.get(info['status'], TerminationCondition.error)
        results.solver.name = 'cyipopt'
        results.solver.return_code = info['status']
        results.solver.message = info['status_msg']
        results.solver.wallclock_time = time.perf_counter() - start
        results.solver.termination_condition = condition
        results.solver.status = TerminationCondition.to_solver_status(condition)
        objective = sign * info['obj_val']
        results.problem.sense = objectives[0].sense
        if sign > 0:
            results.problem.upper_bound = objective
        else:
            results.problem.lower_bound = objective
        results.problem.number_of_constraints = len(constraints)
        results.problem.number_of_variables = forms.n
        if load_solutions and results.solver.status != SolverStatus.error:
            for var, value in zip(forms.variables, x):
                var.set_value(float(value), skip_validation=True)
            suffixes = dict(active_import_suffix_generator(model))
            if 'dual' in suffixes:
                suffixes['dual'].clear()
                suffixes['dual'].update(zip(constraints, info['mult_g']))
            for name, key in (('ipopt_zL_out', 'mult_x_L'), ('ipopt_zU_out', 'mult_x_U')):
                if name in suffixes:
                    suffixes[name].clear()
                    suffixes[name].update(zip(forms.variables, info[key]))
        return results


@contextlib.contextmanager
def as_cyipopt():
    """Pyomo's SolverFactory('cyipopt') gives `QuadraticIpopt` while the block runs (MindtPy
    accepts only its own list of NLP solver names), and Pyomo's interface again after."""
    previous = SolverFactory.get_class('cyipopt') if 'cyipopt' in SolverFactory else None
    doc = SolverFactory.doc('cyipopt') if previous is not None else None
    if previous is not None:
        SolverFactory.unregister('cyipopt')
    SolverFactory.register('cyipopt', 'IPOPT via cyipopt, quadratic models (mmdp)')(
        QuadraticIpopt)
    try:
        yield
    finally:
        SolverFactory.unregister('cyipopt')
        if previous is not None:
            SolverFactory.register('cyipopt', doc)(previous)
