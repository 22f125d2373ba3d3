"""The mdp backend 'mindtpy' (Pyomo MindtPy outer approximation; GLPK for the MILPs, IPOPT through
cyipopt for the NLPs) and its NLP interface, mmdp.solvers.quadratic_ipopt.

Tests that run a sub-solver are skipped where `make install-mindtpy` has not installed it.
MindtPy is a heuristic on the bilinear program: its answers are checked for what holds whatever
it finds (within budget, never above the enumerated optimum, an infeasible budget named as
such); on programs with no bilinear term OA is exact and must reach the optimum within its
tolerances.
"""
import importlib.util
import math

import numpy as np
import pyomo.environ as pyo
import pytest
from pyomo.core.expr.calculus.derivatives import differentiate

from mmdp.solvers import Problem, SolverError, solve
from mmdp.solvers.quadratic_ipopt import QuadraticForms, QuadraticIpopt, as_cyipopt
from mmdp.solvers.synthetic import random_problem

HAVE_GLPK = pyo.SolverFactory('glpk').available(exception_flag=False)
HAVE_CYIPOPT = importlib.util.find_spec('cyipopt') is not None
INSTALLED = HAVE_GLPK and HAVE_CYIPOPT
MISSING = ', '.join(name for name, have in (('GLPK (glpsol)', HAVE_GLPK),
                                             ('cyipopt', HAVE_CYIPOPT)) if not have)
needs_mindtpy = pytest.mark.skipif(
    not INSTALLED, reason=f'{MISSING} not installed: `make install-mindtpy` installs them')
needs_cyipopt = pytest.mark.skipif(
    not HAVE_CYIPOPT, reason='cyipopt not installed: `make install-mindtpy` installs it')
# MindtPy stops at a relative bound gap of 1e-3 or an absolute one of 1e-4 on the objective
# scaled by the sum of every layer's largest importance, and GLPK at a MIP gap of 1e-4.
MINDTPY_RTOL, MINDTPY_ATOL = 1e-3 + 1e-4, 1e-4


def close(a, b, rtol=1e-9):
    return abs(a - b) <= rtol * max(1.0, abs(a), abs(b))


def check_answer(problem: Problem, answer, reference):
    """What holds for any answer of the backend, against the exhaustive solver's."""
    objective, latency = problem.evaluate(answer.widths, answer.removed_blocks)
    assert close(objective, answer.objective) and close(latency, answer.latency)
    if reference.status == 'infeasible':
        # HiGHS's smallest latency: the same as the enumeration's.
        assert answer.status == 'infeasible' and not problem.fits(answer.latency)
        assert close(answer.latency, reference.latency)
    else:
        assert answer.status == 'feasible' and answer.gap is None
        assert problem.fits(answer.latency)
        assert answer.objective <= reference.objective * (1 + 1e-9)


# ---------------------------------------------------------------- the NLP interface
def test_quadratic_forms_values_and_derivatives():
    """Values, Jacobian (against Pyomo's symbolic derivative) and Hessian (exact for a
    quadratic: the Jacobian's difference over a unit step) of random quadratic expressions;
    a fixed variable counts as a constant."""
    rng = np.random.default_rng(0)
    m = pyo.ConcreteModel()
    m.x = pyo.Var(range(4), initialize=lambda m, i: float(rng.normal()))
    m.x[3].fix(0.7)
    exprs = [sum(float(rng.normal()) * m.x[i] for i in range(4))
             + sum(float(rng.normal()) * m.x[i] * m.x[j] for i in range(4) for j in range(i, 4))
             + float(rng.normal()) for _ in range(3)]
    forms = QuadraticForms(exprs, ['e0', 'e1', 'e2'])
    assert [v.name for v in forms.variables] == ['x[0]', 'x[1]', 'x[2]']
    x = np.array([v.value for v in forms.variables])
    assert np.allclose(forms.values(x), [pyo.value(e) for e in exprs], rtol=1e-12, atol=1e-12)
    jac = np.zeros((3, 3))
    np.add.at(jac, (forms.jac_keys // 3, forms.jac_keys % 3), forms.jacobian(x))
    exact = [[pyo.value(d) for d in differentiate(e, wrt_list=forms.variables)] for e in exprs]
    assert np.allclose(jac, exact, rtol=1e-12, atol=1e-12)
    weights = rng.normal(size=3)
    hess = np.zeros((3, 3))
    np.add.at(hess, (forms.hess_keys // 3, forms.hess_keys % 3), forms.hessian(weights))
    assert np.all(forms.hess_keys // 3 >= forms.hess_keys % 3)  # the lower triangle only
    hess = hess + np.tril(hess, -1).T
    for j in range(3):
        step = np.eye(3)[j]
        plus, base = np.zeros((3, 3)), np.zeros((3, 3))
        np.add.at(plus, (forms.jac_keys // 3, forms.jac_keys % 3), forms.jacobian(x + step))
        np.add.at(base, (forms.jac_keys // 3, forms.jac_keys % 3), forms.jacobian(x))
        assert np.allclose(weights @ (plus - base), hess[:, j], rtol=1e-9, atol=1e-9)


def test_quadratic_ipopt_refuses_other_expressions():
    m = pyo.ConcreteModel()
    m.x = pyo.Var(bounds=(0, 1))
    m.curve = pyo.Constraint(expr=pyo.exp(m.x) <= 2)
    m.objective = pyo.Objective(expr=m.x)
    with pytest.raises(ValueError, match="constraint curve is not quadratic"):
        QuadraticIpopt().solve(m)


@needs_cyipopt
def test_quadratic_ipopt_solves_a_convex_program():
    """max x + y + z s.t. x^2 + y^2 <= 2, x = y, z fixed at 0.5: the unique optimum is
    x = y = 1, where the multipliers are 1/2 (the disc) and 0 (the line)."""
    m = pyo.ConcreteModel()
    m.x, m.y = pyo.Var(bounds=(0, 5)), pyo.Var(bounds=(0, 5))
    m.z = pyo.Var(initialize=0.5)
    m.z.fix()
    m.disc = pyo.Constraint(expr=m.x ** 2 + m.y * m.y <= 2)
    m.line = pyo.Constraint(expr=m.x - m.y == 0)
    m.objective = pyo.Objective(expr=m.x + m.y + m.z, sense=pyo.maximize)
    m.dual = pyo.Suffix(direction=pyo.Suffix.IMPORT)
    results = QuadraticIpopt().solve(m)
    assert results.solver.termination_condition == pyo.TerminationCondition.optimal
    assert math.isclose(m.x.value, 1, abs_tol=1e-6) and math.isclose(m.y.value, 1, abs_tol=1e-6)
    assert math.isclose(results.problem.lower_bound, 2.5, abs_tol=1e-6)
    assert math.isclose(abs(m.dual[m.disc]), 0.5, abs_tol=1e-6)
    assert math.isclose(m.dual[m.line], 0, abs_tol=1e-6)


def test_as_cyipopt_gives_pyomo_its_interface_back():
    pyomo_class = pyo.SolverFactory.get_class('cyipopt')
    with pytest.raises(KeyError):
        with as_cyipopt():
            assert pyo.SolverFactory.get_class('cyipopt') is QuadraticIpopt
            raise KeyError('inside')
    assert pyo.SolverFactory.get_class('cyipopt') is pyomo_class


# ---------------------------------------------------------------- the backend
def test_unknown_subsolver_is_named():
    problem = random_problem(np.random.default_rng(0))
    with pytest.raises(SolverError, match="mip_solver='no_such_mip' is not available; to get it: "
                       "install 'no_such_mip' where Pyomo finds it.*backend 'milp'"):
        solve(problem, 'mdp', backend='mindtpy', mindtpy_options=dict(mip_solver='no_such_mip'))


@pytest.mark.skipif(INSTALLED, reason='GLPK and cyipopt are installed: nothing is missing')
def test_missing_subsolvers_name_make_install_mindtpy():
    problem = random_problem(np.random.default_rng(0))
    with pytest.raises(SolverError, match=r"is not available; to get it: `make install-mindtpy`"):
        solve(problem, 'mdp', backend='mindtpy')


@needs_mindtpy
def test_mindtpy_is_exact_on_programs_without_products():
    """No layer reads an input group: the latency is linear in the (block-gated) one-hots, the
    program is a MILP and outer approximation solves it to MindtPy's tolerances. 25 problems,
    blocks and infeasible budgets included."""
    rng = np.random.default_rng(3)  # 7 infeasible budgets among its 25 problems
    statuses = set()
    for _ in range(25):
        problem = random_problem(rng, coupling=False)
        reference = solve(problem, 'exhaustive')
        answer = solve(problem, 'mdp', backend='mindtpy')
        check_answer(problem, answer, reference)
        statuses.add(reference.status)
        if reference.status == 'optimal':
            scale = sum(float(layer.importance.max()) for layer in problem.layers)
            assert (reference.objective - answer.objective
                    <= MINDTPY_RTOL * reference.objective + MINDTPY_ATOL * scale)
    assert statuses == {'optimal', 'infeasible'}


@needs_mindtpy
def test_mindtpy_answers_fit_and_never_beat_the_optimum():
    """Bilinear problems (layers reading input groups, removable blocks): every answer is
    within budget and at most the optimum; MindtPy may also stop with no choice, which the
    backend names as an error only where a choice within budget exists."""
    rng = np.random.default_rng(2)  # 5 infeasible budgets among its 25 problems
    statuses = set()
    for _ in range(25):
        problem = random_problem(rng, coupling=True)
        reference = solve(problem, 'exhaustive')
        try:
            answer = solve(problem, 'mdp', backend='mindtpy')
        except SolverError as e:
            assert 'with no choice within the budget, but one exists' in str(e)
            assert reference.status == 'optimal'
            continue
        check_answer(problem, answer, reference)
        statuses.add(answer.status)
    assert statuses == {'feasible', 'infeasible'}


def detector_like_problem(budget: float) -> Problem:
    """Version 2: a backbone channel group read by a neck conv that only costs, an FFN
    (hidden units) and attention heads in a removable decoder layer."""
    return Problem.from_dict(dict(
        version=2, budget=budget,
        groups={'backbone': {'widths': [16, 32, 48], 'kind': 'channels', 'unit': 1},
                'ffn': {'widths': [64, 128, 256], 'kind': 'hidden', 'unit': 1},
                'heads': {'widths': [1, 2, 4], 'kind': 'heads', 'unit': 32}},
        layers=[
            dict(name='conv', group='backbone', input_group=None, block=None,
                 importance=[3.0, 5.0, 6.0], latency=[1.0, 2.0, 3.0]),
            dict(name='neck', group='backbone', input_group=None, block=None,
                 importance=[0.0, 0.0, 0.0], latency=[0.5, 1.0, 1.5]),
            dict(name='decoder.0.ffn', group='ffn', input_group=None, block='decoder.0',
                 importance=[1.0, 2.5, 3.0], latency=[0.4, 0.8, 1.6]),
            dict(name='decoder.0.attn', group='heads', input_group=None, block='decoder.0',
                 importance=[1.5, 2.0, 2.2], latency=[0.3, 0.6, 1.2]),
        ],
        blocks=['decoder.0']))


@needs_mindtpy
@pytest.mark.parametrize('budget,widths,removed', [
    # Enumerated: each best choice is the only one, at least 2.8% above the next best. The
    # program has no products (head parts have a fixed input), so OA must find it; with the
    # decoder layer removed its FFN and heads widths have no bearing and are not checked.
    (2.0, {'backbone': 16}, ['decoder.0']),
    (3.0, {'backbone': 16, 'ffn': 128, 'heads': 2}, []),
    (4.3, {'backbone': 32, 'ffn': 128, 'heads': 1}, []),
    (6.0, {'backbone': 48, 'ffn': 128, 'heads': 2}, []),
])
def test_mindtpy_on_a_version_2_problem(budget, widths, removed):
    problem = detector_like_problem(budget)
    reference = solve(problem, 'exhaustive')
    answer = solve(problem, 'mdp', backend='mindtpy')
    check_answer(problem, answer, reference)
    assert reference.removed_blocks == removed and answer.removed_blocks == removed
    kept = {g: w for g, w in answer.widths.items() if g in widths}
    assert kept == widths and {g: reference.widths[g] for g in widths} == widths

