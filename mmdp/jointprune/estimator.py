"""Self-adapted stochastic gradient estimation over a pruning vector.

Each step draws `pairs` Gaussian directions e in the normalised space and evaluates the loss at
u + sigma * e and u - sigma * e (antithetic: the even part of the loss cancels, and so does the
noise the pair shares when both are evaluated on the same batch with the same random numbers).
The gradient estimate g is the least-squares (minimum-norm) solution of
g . (p_k - m_k) = L(p_k) - L(m_k) over the pairs, p_k and m_k the perturbed points after clipping
to the box: for pairs no perturbation clips this is the finite-difference gradient projected onto
the sampled directions (for unclipped pairs a descent direction of a smooth loss, since the
central difference is exact to second order), and it stays unbiased where a perturbation is
clipped at a bound. At scale sigma it is the gradient of the smoothed loss, which exists even
though the loss of a rounded sub-network is a step function. When the budget binds, the
directions are drawn orthogonal to its normal (see `step`). The iterate moves by a step of
length `step` along -g / |g| within the tangent cone of the box and the budget, is projected
onto the budget, and the move is kept only if the loss at the new point beats the loss at the
old one on the same batch.

Adaptation (the 1/5-success rule of evolution strategies): a kept move multiplies `step` and
`sigma` by `grow`, a rejected one by grow^(-1/4), so both stay put when one move in five
succeeds. A move that leaves the rounded sub-network unchanged is kept and grows the step (it was
too short to matter); an estimate of exactly zero (no perturbation changed the loss) grows
`sigma` alone. Both stay within their ranges.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


@dataclass
class StepRecord:
    """What one step saw and did."""
    vector: list  # the iterate before the step
    loss: float  # its loss
    candidate: Optional[list]  # the projected move (None when the estimate was zero)
    candidate_loss: Optional[float]
    outcome: str  # 'success' | 'failure' | 'unchanged' | 'flat' | 'stationary'
    step: float  # the step length used
    sigma: float  # the perturbation scale used
    grad_norm: float
    evaluations: int  # loss evaluations this step asked for


def _on_free(normal: Optional[np.ndarray], u: np.ndarray, reach: float
             ) -> Optional[np.ndarray]:
    """The normal over the coordinates farther than `reach` from the box's bounds, renormalised.
    A coordinate a perturbation may clip is perturbed on its own: its perturbations must not be
    correlated with the free coordinates', whose estimates the clipping would otherwise bias."""
    if normal is None:
        return None
    m = np.where((u >= 1 - reach) | (u <= reach), 0.0, normal)
    size = float(np.linalg.norm(m))
    return m / size if size > 0 else None


def descent_direction(u: np.ndarray, grad: np.ndarray, normal: Optional[np.ndarray] = None,
                      reach: float = 1e-12) -> Optional[np.ndarray]:
    """The unit direction of -grad within the tangent cone at u: components that would leave the
    box [0, 1] through a bound within `reach` (the step length) are dropped, and, when the
    budget binds (`normal`) and the direction points out of it, its component along the normal
    (over the remaining coordinates) is removed. None when nothing is left."""
    d = -np.asarray(grad, dtype=float)
    free = ~(((u >= 1 - reach) & (d > 0)) | ((u <= reach) & (d < 0)))
    d = np.where(free, d, 0.0)
    if normal is not None:
        m = np.where(free, normal, 0.0)
        size = float(np.linalg.norm(m))
        if size > 0 and d @ m > 0:
            m /= size
            d -= (d @ m) * m
    size = float(np.linalg.norm(d))
    return d / size if size > 1e-12 * max(1.0, float(np.linalg.norm(grad))) else None


class SelfAdaptedGradient:
    """The optimiser state (`u`, `step`, `sigma`, step count) and one `step(loss, project)`.

    `loss(v)` evaluates a vector (all calls of one step must see the same batch and random
    numbers); `project(v)` returns a feasible vector; `key(v)`, when given, names the discrete
    sub-network of v (equal keys mean equal losses, so the evaluation is not repeated).
    """

    def __init__(self, u0, pairs: int = 2, step: float = 0.1, sigma: float = 0.1,
                 grow: float = 1.5, step_range=(1e-3, 0.5), sigma_range=(1e-3, 0.3),
                 seed: int = 0):
        if pairs < 1:
            raise ValueError(f'pairs must be >= 1, found {pairs}')
        if grow <= 1:
            raise ValueError(f'grow must be > 1, found {grow}')
        for name, value, (low, high) in (('step', step, step_range),
                                         ('sigma', sigma, sigma_range)):
            if not 0 < low <= value <= high:
                raise ValueError(f'{name}={value} must lie in its range [{low}, {high}], '
                                 'with a lower end > 0')
        self.u = np.clip(np.asarray(u0, dtype=float), 0.0, 1.0)
        self.pairs, self.grow, self.seed = int(pairs), float(grow), int(seed)
        self.step_size, self.sigma = float(step), float(sigma)
        self.step_range, self.sigma_range = tuple(step_range), tuple(sigma_range)
        self.count = 0

    def _scale(self, exponent: float, sigma_exponent: Optional[float] = None) -> None:
        lo, hi = self.step_range
        self.step_size = float(np.clip(self.step_size * self.grow**exponent, lo, hi))
        lo, hi = self.sigma_range
        e = exponent if sigma_exponent is None else sigma_exponent
        self.sigma = float(np.clip(self.sigma * self.grow**e, lo, hi))

    def directions(self, normal: Optional[np.ndarray] = None) -> np.ndarray:
        """The step's perturbation directions, the same on every process for a given seed and
        step count; with a unit `normal`, restricted to the plane orthogonal to it."""
        rng = np.random.default_rng([self.seed, self.count])
        e = rng.standard_normal((self.pairs, len(self.u)))
        if normal is not None:
            e -= np.outer(e @ normal, normal)
        return e

    def step(self, loss: Callable, project: Callable, key: Optional[Callable] = None,
             normal: Optional[Callable] = None) -> StepRecord:
        """One step. `normal(u)`, when given, returns the unit normal of the latency budget at
        u when the budget binds there (else None): the perturbations then explore the budget
        surface only, so the estimate is the loss gradient along the surface rather than
        mostly its component across it, which the projection would undo."""
        key = key or (lambda v: tuple(np.round(v, 12)))
        cache = {}

        def evaluate(v):
            k = key(v)
            if k not in cache:
                cache[k] = float(loss(v))
            return cache[k]

        u, sigma, step = self.u, self.sigma, self.step_size
        n = normal(u) if normal else None
        f0 = evaluate(u)
        rows, diffs = [], []
        for e in self.directions(_on_free(n, u, sigma)):
            plus, minus = np.clip(u + sigma * e, 0.0, 1.0), np.clip(u - sigma * e, 0.0, 1.0)
            rows.append(plus - minus)
            diffs.append(evaluate(plus) - evaluate(minus))
        grad = np.linalg.lstsq(np.array(rows), np.array(diffs), rcond=None)[0]
        norm = float(np.linalg.norm(grad))
        self.count += 1
        if norm == 0.0:
            self._scale(0.0, sigma_exponent=1.0)
            return StepRecord(u.tolist(), f0, None, None, 'flat', step, sigma, norm, len(cache))
        direction = descent_direction(u, grad, n, reach=step)
        if direction is None:  # every descent leaves the box or the budget: a KKT point
            self._scale(-0.25)
            return StepRecord(u.tolist(), f0, None, None, 'stationary', step, sigma, norm,
                              len(cache))
        cand = np.asarray(project(u + step * direction), dtype=float)
        if key(cand) == key(u):
            outcome, f1 = 'unchanged', f0
            self.u = cand
            self._scale(1.0, sigma_exponent=0.0)
        else:
            f1 = evaluate(cand)
            if f1 < f0:
                outcome = 'success'
                self.u = cand
                self._scale(1.0)
            else:
                outcome = 'failure'
                self._scale(-0.25)
        return StepRecord(u.tolist(), f0, cand.tolist(), f1, outcome, step, sigma, norm,
                          len(cache))

    def state_dict(self) -> dict:
        return dict(u=self.u.tolist(), step=self.step_size, sigma=self.sigma, count=self.count)

    def load_state_dict(self, state: dict) -> None:
        if len(state['u']) != len(self.u):
            raise ValueError(f"saved pruning vector has {len(state['u'])} coordinates, this "
                             f'space has {len(self.u)}')
        self.u = np.asarray(state['u'], dtype=float)
        self.step_size, self.sigma = float(state['step']), float(state['sigma'])
        self.count = int(state['count'])
