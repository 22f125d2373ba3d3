"""Projection of a pruning vector onto the latency budget {u in [0, 1]^d : latency(u) <= budget}.

For a latency linear in u, the Euclidean projection onto the box cut by the half-space is
clip(w - lam * a, 0, 1) with `a` the latency gradient and the smallest feasible lam >= 0. The
same path is used for any latency: `a` is the latency saved per unit of each coordinate, by a
backward difference of one rounding cell at w (a discrete sub-network's latency is a step
function: a smaller difference would read 0), negative slopes taken as 0; lam is found by
bisection. Where that path ends infeasible (a coordinate that costs latency elsewhere reads as
free), bisection runs along the ray from the smallest vector (u = 0) to w instead. Bisection
returns only points it has checked, so the result is always within budget.
"""
from typing import Callable, Optional

import numpy as np


class InfeasibleBudgetError(ValueError):
    """Even the smallest vector of the space exceeds the latency budget."""


class LatencyProjection:
    """`project(w)`: a vector within `budget` close to w. `latency(u)` predicts the latency of
    a (normalised) vector; `cells` are the backward-difference steps per coordinate."""

    def __init__(self, latency: Callable, budget: float, cells, iters: int = 40):
        self.latency, self.budget = latency, float(budget)
        self.cells = np.asarray(cells, dtype=float)
        if np.any(self.cells <= 0):
            raise ValueError(f'difference cells must be > 0, found {self.cells}')
        self.iters = int(iters)
        smallest = float(latency(np.zeros(len(self.cells))))
        if not self.fits(smallest):
            raise InfeasibleBudgetError(
                f'latency budget {self.budget:.6g} is below the latency of the smallest '
                f'sub-network of the space ({smallest:.6g}): lower min_width / min_depth, add '
                'smaller image sizes to the ladder or lower prune_ratio')

    def fits(self, value: float) -> bool:
        return value <= self.budget * (1 + 1e-9)

    def slopes(self, w: np.ndarray) -> np.ndarray:
        """Latency saved per unit of each coordinate when it goes one cell down from w."""
        base = float(self.latency(w))
        a = np.zeros_like(w)
        for i, h in enumerate(self.cells):
            step = min(h, w[i])
            if step <= 0:
                continue
            down = w.copy()
            down[i] -= step
            a[i] = max(0.0, (base - float(self.latency(down))) / step)
        return a

    def normal(self, u, reach: float) -> Optional[np.ndarray]:
        """The unit latency gradient at u when the budget binds within `reach` of u along it
        (the perturbation scale), else None."""
        u = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
        a = self.slopes(u)
        norm = float(np.linalg.norm(a))
        if norm == 0.0:
            return None
        a = a / norm
        outward = np.clip(u + reach * a, 0.0, 1.0)
        return a if not self.fits(self.latency(outward)) else None

    def _bisect(self, path: Callable, lo: float, hi: float) -> np.ndarray:
        """path(hi) feasible, path(lo) not: the feasible point of the path nearest lo."""
        for _ in range(self.iters):
            mid = 0.5 * (lo + hi)
            if self.fits(self.latency(path(mid))):
                hi = mid
            else:
                lo = mid
        return path(hi)

    def __call__(self, w) -> np.ndarray:
        # The path starts from w itself, not from w clipped to the box: that is what makes
        # it the Euclidean projection when w lies outside the box.
        w = np.asarray(w, dtype=float)
        inside = np.clip(w, 0.0, 1.0)
        if self.fits(self.latency(inside)):
            return inside
        a = self.slopes(inside)
        moving = a > 0
        if moving.any():
            lam_max = float(np.max(np.maximum(w[moving], 0.0) / a[moving]))

            def path(lam):
                return np.clip(w - lam * a, 0.0, 1.0)
            if self.fits(self.latency(path(lam_max))):
                return self._bisect(path, 0.0, lam_max)
        return self._bisect(lambda t: t * inside, 1.0, 0.0)
