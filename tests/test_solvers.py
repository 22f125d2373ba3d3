"""Tests of the pruning solvers (mmdp.solvers) and tools/solve.py."""
import contextlib
import copy
import importlib.util
import itertools
import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pyomo.environ as pyo
import pytest

from mmengine.logging import MMLogger

from mmdp.solvers import (SOLVERS, Problem, ProblemError, Solution, SolverError, build_solver,
                          solve)
from mmdp.solvers import exhaustive
from mmdp.solvers.base import ChoiceSpace
from mmdp.solvers.halp import exact_mckp, greedy_augmented
from mmdp.solvers.mdp import build_model
from mmdp.solvers.synthetic import random_problem, resnet_problem, whole_detector_problem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXACT = dict(mip_rel_gap=0.0)


def close(a, b, rtol=1e-6):
    return abs(a - b) <= rtol * max(1.0, abs(a), abs(b))


def check_recomputed(problem, solution):
    """The solution's numbers are the problem's own, and a solved one fits."""
    objective, latency = problem.evaluate(solution.widths, solution.removed_blocks)
    assert close(objective, solution.objective, 1e-12) and close(latency, solution.latency, 1e-12)
    if solution.status != 'infeasible':
        assert problem.fits(solution.latency)
    else:
        assert not problem.fits(solution.latency)


def optima(problem, removable=None) -> list:
    """Every (widths, removed blocks) of the largest objective within the budget, by brute
    force: a test that asserts a choice checks first that it is the only right one. A group no
    kept layer reads or writes has no bearing on the answer: its width shows as None."""
    blocks = problem.blocks if removable is None else removable
    found = []
    for widths in itertools.product(*problem.groups.values()):
        for n in range(len(blocks) + 1):
            for removed in itertools.combinations(blocks, n):
                objective, latency = problem.evaluate(dict(zip(problem.groups, widths)),
                                                      removed)
                kept = {g for layer in problem.layers if layer.block not in removed
                        for g in (layer.group, layer.input_group)}
                choice = {g: w if g in kept else None for g, w in zip(problem.groups, widths)}
                if problem.fits(latency) and (choice, sorted(removed)) not in [
                        (c, r) for _, c, r in found]:
                    found.append((objective, choice, sorted(removed)))
    best = max(o for o, _, _ in found)
    return [(c, r) for o, c, r in found if close(o, best, 1e-9)]


def small_problem():
    """Two groups, a coupled layer in removable block 'b', a fixed-input stem."""
    return dict(
        version=1, budget=10.0,
        groups={'a': {'widths': [1, 2]}, 'c': {'widths': [2, 4, 6]}},
        layers=[
            dict(name='stem', group='a', input_group=None, block=None, importance=[1.0, 3.5],
                 latency=[1.0, 2.0]),
            dict(name='conv', group='c', input_group='a', block='b', importance=[2.0, 5.0, 6.0],
                 latency=[[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]]),
        ],
        blocks=['b'], meta={'note': 'kept through a round trip'})


# ---------------------------------------------------------------- MDP against enumeration
@pytest.mark.parametrize('seed', range(4))
def test_mdp_matches_exhaustive_on_random_problems(seed):
    """30 problems per seed (120 in all): coupling, blocks, tight/loose/infeasible budgets."""
    rng = np.random.default_rng(seed)
    statuses = set()
    for _ in range(30):
        problem = random_problem(rng, coupling=rng.random() < 0.8)
        reference = solve(problem, 'exhaustive')
        answer = solve(problem, 'mdp', **EXACT)
        statuses.add(reference.status)
        assert answer.status == reference.status
        check_recomputed(problem, answer)
        if reference.status == 'optimal':
            assert close(answer.objective, reference.objective), (problem.to_dict(), answer)
            assert answer.gap is not None and answer.gap <= 1e-6
            # HALP's answer keeps every block and freezes inputs: never better than MDP.
            halp = solve(problem, 'halp')
            assert halp.status == 'infeasible' or halp.objective <= answer.objective + 1e-9
        else:
            assert close(answer.latency, reference.latency), (problem.to_dict(), answer)
    assert statuses == {'optimal', 'infeasible'}


def test_token_group_settings_are_checked():
    data = random_problem(np.random.default_rng(3), tokens=True).to_dict()
    data['groups']['tokens']['settings'].pop()
    with pytest.raises(ProblemError, match=r"group 'tokens' \(kind 'tokens'\): 'settings' must "
                                           r'list one setting per width'):
        Problem.from_dict(data)
    data = random_problem(np.random.default_rng(3), tokens=True).to_dict()
    data['groups']['g0']['settings'] = []
    with pytest.raises(ProblemError, match="'settings' belongs to a group of kind 'tokens'"):
        Problem.from_dict(data)


@pytest.mark.parametrize('seed', range(2))
def test_mdp_matches_exhaustive_with_token_groups(seed):
    """Random problems with a token group (a decoder part's T[width][token setting]): MDP's
    choice is brute force's, on the instances (a fixed, seeded set) whose optimum is unique."""
    rng = np.random.default_rng(100 + seed)
    checked = fewer = 0
    for _ in range(30):
        problem = random_problem(rng, tokens=True)
        assert problem.group_info['tokens']['kind'] == 'tokens'
        reference = solve(problem, 'exhaustive')
        answer = solve(problem, 'mdp', **EXACT)
        assert answer.status == reference.status
        check_recomputed(problem, answer)
        if reference.status != 'optimal':
            continue
        assert answer.gap is not None and answer.gap <= 1e-6
        best = optima(problem)
        if len(best) != 1:
            continue
        widths, removed = best[0]
        assert {g: w for g, w in answer.widths.items() if widths[g] is not None} == {
            g: w for g, w in widths.items() if w is not None}
        assert sorted(answer.removed_blocks) == removed
        halp = solve(problem, 'halp')  # the token group frozen as an input, chosen as a width
        assert halp.status == 'infeasible' or halp.objective <= answer.objective + 1e-9
        checked += 1
        fewer += widths['tokens'] not in (None, problem.groups['tokens'][-1])
    assert checked >= 15 and fewer >= 5  # and the optimum often gives up tokens


def test_mdp_options_match_exhaustive():
    rng = np.random.default_rng(7)
    for _ in range(10):
        problem = random_problem(rng, max_blocks=2, max_widths=4)
        group = next(iter(problem.groups))
        options = dict(min_widths={group: problem.groups[group][-1]},
                       removable_blocks=problem.blocks[:1])
        reference = solve(problem, 'exhaustive', **options)
        answer = solve(problem, 'mdp', **options, **EXACT)
        assert answer.status == reference.status
        assert answer.widths[group] == problem.groups[group][-1]
        assert set(answer.removed_blocks) <= set(problem.blocks[:1])
        if reference.status == 'optimal':
            assert close(answer.objective, reference.objective)


def test_removed_block_drops_value_and_latency():
    problem = Problem.from_dict(small_problem())
    assert problem.evaluate({'a': 2, 'c': 6}) == (9.5, 8.0)
    assert problem.evaluate({'a': 2, 'c': 6}, ['b']) == (3.5, 2.0)
    # Budget 2.5: a=2 with 'b' removed (value 3.5, latency 2) beats keeping 'b' at a=1, c=2
    # (value 1 + 2 = 3, latency 1 + 1); every other choice is over the budget or worth less.
    tight = problem.with_budget(2.5)
    assert optima(tight) == [({'a': 2, 'c': None}, ['b'])]
    answer = solve(tight, 'mdp')
    assert answer.status == 'optimal' and answer.removed_blocks == ['b']
    assert answer.widths['a'] == 2 and answer.objective == 3.5
    # Without block removal the smallest latency is 1 + 1 = 2 > 1.5.
    answer = solve(problem.with_budget(1.5), 'mdp', removable_blocks=[])
    assert answer.status == 'infeasible' and answer.latency == 2.0


def test_bilinear_model_latency_equals_evaluate():
    """The MINLP handed to MindtPy computes the problem's latency at every integer point."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        problem = random_problem(rng)
        space = ChoiceSpace.build(problem)
        m = build_model(problem, space, linearise=False)
        for positions in itertools.product(*space.allowed.values()):
            choice = dict(zip(space.allowed, positions))
            removed = [b for b in space.removable if rng.random() < 0.5]
            for (g, k), var in m.x.items():
                var.set_value(int(choice[g] == k))
            for b, var in m.keep.items():
                var.set_value(int(b not in removed))
            for (g, b, k), var in m.u.items():
                var.set_value(int(choice[g] == k and b not in removed))
            widths = {g: problem.groups[g][k] for g, k in choice.items()}
            objective, latency = problem.evaluate(widths, removed)
            assert close(pyo.value(m.latency) * m.latency_scale, latency, 1e-9)
            assert close(pyo.value(m.value) * m.value_scale, objective, 1e-9)


@contextlib.contextmanager
def warnings_logged():
    """The WARNING records of mmengine's current logger while the block runs."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_mdp_time_limit_reports_the_gap_warns_and_may_be_refused():
    """A ResNet-34 problem (16-channel chunks) under a 10 ms limit: building the model alone
    takes longer, so HiGHS is stopped at once. The answer is not proven optimal; its gap is
    finite and positive, is logged as a warning, and bounds the true optimum."""
    problem = resnet_problem(34, 16)
    with warnings_logged() as records:
        answer = solve(problem, 'mdp', time_limit=0.01)
    assert answer.status == 'feasible'
    check_recomputed(problem, answer)
    assert 0 < answer.gap < math.inf
    messages = [r.getMessage() for r in records]
    assert any('stopped by the time limit (0.01 s)' in m and f'gap {answer.gap:.2%}' in m
               for m in messages), messages
    best = solve(problem, 'mdp', **EXACT)
    assert best.status == 'optimal' and best.gap <= 1e-6
    assert answer.objective <= best.objective + 1e-9
    assert best.objective <= answer.objective * (1 + answer.gap) * (1 + 1e-9)
    with pytest.raises(SolverError, match=r'before proving the optimum.*gap .*%; '
                       r'require_optimal=True'):
        solve(problem, 'mdp', time_limit=0.01, require_optimal=True)
    with pytest.raises(ValueError, match='require_optimal=True needs backend'):
        build_solver('mdp', backend='mindtpy', require_optimal=True)


# ---------------------------------------------------------------- HALP
def brute_force_frozen(problem):
    """Best width choice when every layer's input is frozen at its largest width."""
    best = None
    groups = list(problem.groups)
    for positions in itertools.product(*(range(len(problem.groups[g])) for g in groups)):
        k = dict(zip(groups, positions))
        value = sum(layer.importance[k[layer.group]] for layer in problem.layers)
        cost = sum(layer.latency[k[layer.group]] if layer.input_group is None
                   else layer.latency[k[layer.group], -1] for layer in problem.layers)
        if cost <= problem.budget and (best is None or value > best):
            best = value
    return best


def test_halp_exact_matches_exhaustive_without_coupling():
    rng = np.random.default_rng(11)
    for _ in range(60):
        problem = random_problem(rng, coupling=False, max_blocks=0, integer=True)
        reference = solve(problem, 'exhaustive')
        answer = solve(problem, 'halp', resolution=1)
        check_recomputed(problem, answer)
        if reference.status == 'optimal':
            assert answer.status == 'feasible'
            assert close(answer.objective, reference.objective)
        else:
            assert answer.status == 'infeasible'
            assert close(answer.latency, reference.latency)


def test_halp_exact_matches_frozen_input_brute_force():
    rng = np.random.default_rng(12)
    for _ in range(60):
        problem = random_problem(rng, coupling=True, monotone=True, max_blocks=0, integer=True)
        answer = solve(problem, 'halp', resolution=1)
        check_recomputed(problem, answer)
        best = brute_force_frozen(problem)
        if best is not None:
            assert answer.status == 'feasible' and close(answer.objective, best)


def test_halp_greedy_never_better_than_exact_and_both_fit():
    """(That the prefix rule can cost value is shown on a hand-made instance below.)"""
    rng = np.random.default_rng(13)
    for _ in range(60):
        problem = random_problem(rng, max_blocks=0, monotone=rng.random() < 0.5)
        exact = solve(problem, 'halp')
        greedy = solve(problem, 'halp', method='greedy')
        for answer in (exact, greedy):
            check_recomputed(problem, answer)
            assert answer.removed_blocks == []
        if greedy.status != 'infeasible':
            assert exact.status != 'infeasible'
            assert greedy.objective <= exact.objective + 1e-9


def test_greedy_takes_a_negative_chunk_cost_as_published():
    """Family A's second chunk costs -2 (width 3 is cheaper than width 2): 3 then -2 puts A at
    width 3 for 1 unit, worth 5. Capacity 2 and B's chunk (cost 2, worth 3) do not all fit
    (1 + 2 > 2), so the DP runs, its table reaching 2 units past the capacity for the state
    that A's first chunk (cost 3) takes there. Published answer: A at width 3, B at 1 (5);
    clamping the cost at 0 (the running maximum) would make A's first chunk unaffordable and
    keep B instead (3)."""
    values = [np.array([0.0, 4.0, 5.0]), np.array([0.0, 3.0])]
    costs = [np.array([0, 3, 1]), np.array([0, 2])]
    assert greedy_augmented(values, costs, 2) == [2, 0]
    assert exact_mckp(values, costs, 2) == [2, 0]  # the only choice worth 5 within 2 units
    # Every chunk fits (3 - 2 = 1 <= 2): all are kept, as the published shortcut does.
    assert greedy_augmented(values[:1], costs[:1], 2) == [2]


def test_greedy_keeps_a_free_chunk_that_adds_nothing():
    """A zero-cost chunk of zero value is taken, as the published DP does (value ties are taken
    only at zero cost): A ends at width 2, not 1."""
    values = [np.array([0.0, 5.0, 5.0]), np.array([0.0, 2.0])]
    costs = [np.array([0, 1, 1]), np.array([0, 5])]
    assert greedy_augmented(values, costs, 1) == [2, 0]


def test_greedy_refuses_a_table_past_max_states():
    values = [np.array([0.0, 4.0, 5.0]), np.array([0.0, 3.0])]
    costs = [np.array([0, 3, 1]), np.array([0, 2])]
    with pytest.raises(SolverError, match='needs 5 states .*more than max_bins=4'):
        greedy_augmented(values, costs, 2, max_states=4)


def test_greedy_prefix_rule_misses_the_optimum():
    """The best state at capacity 1 holds family B's chunk, so A's second chunk cannot extend
    it: greedy keeps B + A1 (6), the optimum is A1 + A2 (11)."""
    values = [np.array([0.0, 5.0]), np.array([0.0, 1.0, 11.0])]
    costs = [np.array([0, 1]), np.array([0, 1, 2])]
    assert greedy_augmented(values, costs, 2) == [1, 1]
    assert exact_mckp(values, costs, 2) == [0, 2]


def test_halp_discretisation_is_sound():
    """Coarse resolutions lose value but never break the budget."""
    problem = resnet_problem(18, 16)
    for resolution in (None, 0.01, 0.1):
        for method in ('exact', 'greedy'):
            answer = solve(problem, 'halp', method=method, resolution=resolution)
            assert answer.status == 'feasible'
            check_recomputed(problem, answer)


def test_halp_current_widths_and_steps():
    problem = resnet_problem(18, 32)
    current = {g: ws[-2] if len(ws) > 2 else ws[-1] for g, ws in problem.groups.items()}
    answer = solve(problem, 'halp', current_widths=current)
    assert all(answer.widths[g] <= current[g] for g in problem.groups)
    check_recomputed(problem, answer)
    one_shot = solve(problem, 'halp')
    stepped = solve(problem, 'halp', steps=30)
    check_recomputed(problem, stepped)
    # Freezing inputs at the dense widths leaves budget unused; the schedule recovers it.
    assert stepped.latency > one_shot.latency
    with pytest.raises(ProblemError, match="not an allowed width of group"):
        solve(problem, 'halp', current_widths={next(iter(problem.groups)): 7})


# ---------------------------------------------------------------- exhaustive, registry, synthetic
def test_exhaustive_refuses_large_problems():
    with pytest.raises(SolverError, match='max_combinations=1000'):
        solve(resnet_problem(18, 32), 'exhaustive', max_combinations=1000)


def test_exhaustive_enumerates_more_than_32_groups():
    """37 groups of one width and 3 of two (numpy's meshgrid stops at 32 arrays). Budget 79 of
    80 shrinks exactly one of the three: the one whose wider width gains least, g38."""
    gains = {'g37': 2.5, 'g38': 2.2, 'g39': 2.9}
    groups = {f'g{i}': {'widths': [2]} for i in range(37)}
    groups.update({g: {'widths': [1, 2]} for g in gains})
    layers = [dict(name=f'l{i}', group=f'g{i}', input_group=None, block=None,
                   importance=[2.0], latency=[2.0]) for i in range(37)]
    layers += [dict(name=f'l_{g}', group=g, input_group=None, block=None,
                    importance=[1.0, v], latency=[1.0, 2.0]) for g, v in gains.items()]
    problem = Problem.from_dict(dict(version=1, budget=79.0, groups=groups, layers=layers,
                                     blocks=[]))
    answer = solve(problem, 'exhaustive')
    assert answer.status == 'optimal'
    assert {g: answer.widths[g] for g in gains} == {'g37': 2, 'g38': 1, 'g39': 2}
    assert answer.objective == pytest.approx(37 * 2.0 + 2.5 + 1.0 + 2.9)


def test_exhaustive_mixed_radix_slices():
    assert exhaustive.width_combinations([2, 3], 1, 5).tolist() == [[0, 1], [0, 2], [1, 0],
                                                                    [1, 1]]


def test_exhaustive_answer_does_not_depend_on_its_slices(monkeypatch):
    """The answer is the first best in enumeration order (ties included), however the
    combinations are sliced."""
    rng = np.random.default_rng(5)
    problems = [random_problem(rng) for _ in range(20)]
    whole = [solve(p, 'exhaustive') for p in problems]
    monkeypatch.setattr(exhaustive, 'CHUNK', 1)
    for problem, reference in zip(problems, whole):
        answer = solve(problem, 'exhaustive')
        assert (answer.status, answer.widths, answer.removed_blocks) == (
            reference.status, reference.widths, reference.removed_blocks)


def test_registry():
    assert {'mdp', 'halp', 'exhaustive'} <= set(SOLVERS.module_dict)
    solver = build_solver(dict(type='halp', method='greedy'))
    assert solver.method == 'greedy'
    with pytest.raises(KeyError, match="unknown solver 'nope'"):
        build_solver('nope')
    with pytest.raises(TypeError, match='time_limit'):
        build_solver('halp', time_limit=3)
    with pytest.raises(ValueError, match='backend'):
        build_solver('mdp', backend='gurobi')


def test_resnet_problem_shapes():
    r50 = resnet_problem(50, 32)
    assert (len(r50.layers), len(r50.blocks)) == (53, 16)
    r101 = resnet_problem(101, 32, removable_blocks=False)
    assert (len(r101.layers), r101.blocks) == (104, [])
    downsample = [layer for layer in r50.layers if 'downsample' in layer.name]
    assert len(downsample) == 4 and all(layer.block is None for layer in downsample)
    stage4 = [layer.name for layer in r50.layers if layer.group == 'backbone.layer4.residual']
    assert stage4 == ['backbone.layer4.0.downsample.0'] + [
        f'backbone.layer4.{i}.conv3' for i in range(3)]
    r18 = resnet_problem(18, 32)
    assert r18.layers[0].group == 'backbone.layer1.residual'  # stem joins stage 1's residual
    assert close(r50.budget, 0.55 * r50.dense_latency())


# ---------------------------------------------------------------- problem format
def test_problem_round_trip(tmp_path):
    problem = Problem.from_dict(small_problem())
    assert problem.to_dict() == small_problem()
    problem.save(tmp_path / 'p.json')
    assert Problem.load(tmp_path / 'p.json').to_dict() == small_problem()
    solution = solve(problem, 'mdp')
    solution.save(tmp_path / 's.json')
    assert Solution.load(tmp_path / 's.json') == solution
    assert sorted(os.listdir(tmp_path)) == ['p.json', 's.json']  # no temporary files left


def test_failed_save_leaves_the_old_file(tmp_path):
    path = tmp_path / 's.json'
    Solution('optimal', 1.0, 1.0, {'a': 1}, [], 0.0, 0.1).save(path)
    before = path.read_text()
    with pytest.raises(TypeError):
        Solution('optimal', 1.0, 1.0, {'a': object()}, [], 0.0, 0.1).save(path)
    assert path.read_text() == before and os.listdir(tmp_path) == ['s.json']


def _broken(edit):
    data = copy.deepcopy(small_problem())
    edit(data)
    return data


MALFORMED = [
    (lambda d: d.pop('budget'), "missing key 'budget'"),
    (lambda d: d.update(version=3), "'version' is 3"),
    (lambda d: d.update(version=2) or d['groups'][next(iter(d['groups']))].update(kind='rows'),
     "'kind' is 'rows'"),
    (lambda d: d.update(version=2) or d['groups'][next(iter(d['groups']))].update(unit=0),
     "'unit' must be a positive integer"),
    (lambda d: d.update(budget='fast'), "'budget' must be a finite number"),
    (lambda d: d['groups']['c'].update(widths=[4, 2, 6]), "group 'c': 'widths' must be strictly"),
    (lambda d: d['groups']['a'].update(widths=[]), "group 'a': 'widths' must be a non-empty"),
    (lambda d: d['layers'][1].update(importance=[1.0, 2.0]),
     "layer 'conv': 'importance' .* has length 2, expected 3"),
    (lambda d: d['layers'][1].update(latency=[[1.0, 2.0]]),
     "layer 'conv': 'latency' has 1 rows, expected 3"),
    (lambda d: d['layers'][1]['latency'].__setitem__(2, [1.0]),
     r"layer 'conv': 'latency'\[2\] .*input_group 'a'.* has length 1, expected 2"),
    (lambda d: d['layers'][0].update(latency=[[1.0], [2.0]]),
     "layer 'stem': 'latency' .* must hold finite numbers"),
    (lambda d: d['layers'][1].update(group='x'), "layer 'conv': 'group' 'x' is not in 'groups'"),
    (lambda d: d['layers'][1].update(input_group='x'), "layer 'conv': 'input_group' 'x'"),
    (lambda d: d['layers'][1].pop('block'), "layer 'conv': missing key 'block'"),
    (lambda d: d['layers'][1].update(name='stem'), 'layer names must be unique'),
    (lambda d: d.update(blocks=['b', 'ghost']), "block 'ghost' is listed in 'blocks'"),
    (lambda d: d['layers'][1]['importance'].__setitem__(1, -1.0),
     "layer 'conv': importance must not be negative, found -1 at width 4 of group 'c'"),
    (lambda d: d['layers'][1]['latency'][0].__setitem__(1, -2.0),
     "layer 'conv': latency must not be negative, found -2 at width 2 of group 'c', input "
     "width 2 of group 'a'"),
    (lambda d: d['layers'][0]['latency'].__setitem__(0, -0.5),
     "layer 'stem': latency must not be negative, found -0.5 at width 1 of group 'a'"),
]


@pytest.mark.parametrize('edit,message', MALFORMED)
def test_malformed_problems_are_named(edit, message):
    with pytest.raises(ProblemError, match=message):
        Problem.from_dict(_broken(edit))


def test_bad_choices_are_named():
    problem = Problem.from_dict(small_problem())
    with pytest.raises(ProblemError, match="3 is not an allowed width of group 'c'"):
        problem.evaluate({'a': 1, 'c': 3})
    with pytest.raises(ProblemError, match="no width given for group 'c'"):
        problem.evaluate({'a': 1})
    with pytest.raises(ProblemError, match="'x' is not a removable block"):
        problem.evaluate({'a': 1, 'c': 2}, ['x'])
    with pytest.raises(ProblemError, match="group 'c': no width in"):
        solve(problem, 'mdp', min_widths={'c': 8})
    with pytest.raises(ProblemError, match="'x' is not a removable block"):
        solve(problem, 'exhaustive', removable_blocks=['x'])


# ---------------------------------------------------------------- tools/solve.py
def run_solve(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, 'tools', 'solve.py'), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_solve_tool_round_trip_and_infeasible_exit(tmp_path):
    problem = Problem.from_dict(small_problem()).with_budget(6.0)
    problem.save(tmp_path / 'p.json')
    done = run_solve(str(tmp_path / 'p.json'), '--solver', 'mdp', '--time-limit', '30',
                     '--gap', '0', '--out', str(tmp_path / 's.json'))
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / 's.json').read_text())
    assert set(saved) == {'status', 'objective', 'latency', 'widths', 'removed_blocks', 'gap',
                          'seconds'}
    reference = solve(problem, 'exhaustive')
    assert saved['status'] == 'optimal' and close(saved['objective'], reference.objective)
    check_recomputed(problem, Solution.from_dict(saved))

    problem.with_budget(0.5).save(tmp_path / 'tight.json')
    done = run_solve(str(tmp_path / 'tight.json'), '--solver', 'halp', '--options',
                     'method=greedy', '--out', str(tmp_path / 'tight_s.json'))
    assert done.returncode == 1
    assert 'smallest latency reachable is 2' in done.stdout + done.stderr
    assert json.loads((tmp_path / 'tight_s.json').read_text())['status'] == 'infeasible'


def test_solve_tool_rejects_bad_input(tmp_path):
    # In-process (the subprocess round trip is tested above): load tools/solve.py by path.
    spec = importlib.util.spec_from_file_location('solve_tool', os.path.join(REPO, 'tools',
                                                                            'solve.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    main = tool.main
    (tmp_path / 'bad.json').write_text(json.dumps(_broken(lambda d: d.pop('layers'))))
    out = str(tmp_path / 's.json')
    assert main([str(tmp_path / 'bad.json'), '--out', out]) == 2
    assert main([str(tmp_path / 'missing.json'), '--out', out]) == 2
    Problem.from_dict(small_problem()).save(tmp_path / 'p.json')
    assert main([str(tmp_path / 'p.json'), '--solver', 'halp', '--time-limit', '3',
                 '--out', out]) == 2
    (tmp_path / 'negative.json').write_text(json.dumps(
        _broken(lambda d: d['layers'][1]['importance'].__setitem__(0, -3.0))))
    assert main([str(tmp_path / 'negative.json'), '--out', out]) == 2
    # Stopped by its time limit with require_optimal: the solver fails (exit 3).
    resnet_problem(34, 16).save(tmp_path / 'r34.json')
    assert main([str(tmp_path / 'r34.json'), '--time-limit', '0.01', '--options',
                 'require_optimal=True', '--out', out]) == 3
    assert not os.path.exists(out)


def test_version_2_keeps_group_kinds_and_version_1_files_still_solve():
    v1 = resnet_problem(18, 64, True, 0.6)
    assert v1.to_dict()['version'] == 1
    v2 = whole_detector_problem(50, 64, 0.55)
    data = v2.to_dict()
    assert data['version'] == 2
    heads = data['groups']['head.decoder.layers.0.cross_attn.heads']
    assert heads['kind'] == 'heads' and heads['unit'] == 32 and heads['widths'] == list(range(1, 9))
    tokens = data['groups']['head.tokens']
    assert tokens['kind'] == 'tokens' and tokens['widths'] == [100, 150, 200, 250, 300]
    assert tokens['settings'][-1] == dict(num_query=300, num_propagated=128, memory_len=512)
    assert Problem.from_dict(data).to_dict() == data
    for problem in (v1, v2):
        assert build_solver('mdp').solve(problem).status == 'optimal'


def test_whole_detector_mdp_is_exact_and_beats_halp():
    """On the whole-detector program the MILP's optimum is at least HALP's answer, within the
    budget, and a removed decoder layer drops its parts' value and latency."""
    problem = whole_detector_problem(50, 64, 0.5)
    mdp = build_solver('mdp').solve(problem)
    halp = build_solver(dict(type='halp', method='exact')).solve(problem)
    assert mdp.status == 'optimal' and problem.fits(mdp.latency)
    assert mdp.objective >= halp.objective - 1e-9 * abs(halp.objective)
    dense = {g: ws[-1] for g, ws in problem.groups.items()}
    full_value, full_ms = problem.evaluate(dense)
    value, ms = problem.evaluate(dense, ['head.decoder.layers.3'])
    parts = [l for l in problem.layers if l.block == 'head.decoder.layers.3']
    assert len(parts) == 3
    assert full_value - value == pytest.approx(sum(l.importance[-1] for l in parts))
    # Each part's latency is a table over (its width, the token setting): dense is [-1, -1].
    assert full_ms - ms == pytest.approx(sum(l.latency[-1, -1] for l in parts))
    assert all(l.input_group == 'head.tokens' for l in parts)
    # Fewer tokens make a dense part cheaper: its full width costs less at the smallest setting.
    assert all(l.latency[-1, 0] < l.latency[-1, -1] for l in parts)
