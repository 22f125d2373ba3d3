"""Paired speed-up: two detectors timed alternately on the same frames in one process, so that
whatever else loads the machine slows both alike and cancels out of their ratio."""
from typing import Callable, Sequence

import numpy as np

from mmdp.latency.timer import Timer

PERCENTILES = (5, 25, 50, 75, 95)


def _spread(values) -> dict:
    v = np.asarray(values, dtype=float)
    out = {f'p{q}': float(np.percentile(v, q)) for q in PERCENTILES}
    out.update(median=float(np.median(v)), mean=float(v.mean()), iqr=out['p75'] - out['p25'])
    return out


def paired_speedup(run_a: Callable, run_b: Callable, frames: Callable[[int], Sequence],
                   timer: Timer, rounds: int = 20, warmup: int = 3) -> dict:
    """Speed-up of A over B (B's frame time / A's), per round and summarised.

    `run_x(data)` runs model x on one frame; `frames(i)` gives frame i as (data for A, data for
    B), the same images and camera rig for both. Both see frames 0 .. warmup-1 untimed, then
    one frame each per round; the model that goes first alternates between rounds, so that a
    drift within a round (a cache, a clock, a neighbour) does not favour either.
    """
    if rounds < 2 or warmup < 0:
        raise ValueError(f'rounds must be >= 2 and warmup >= 0, found {rounds}, {warmup}')
    for i in range(warmup):
        data_a, data_b = frames(i)
        run_a(data_a)
        run_b(data_b)
    ms_a, ms_b = [], []
    for r in range(rounds):
        data_a, data_b = frames(warmup + r)
        order = ((run_a, data_a, ms_a), (run_b, data_b, ms_b))
        for run, data, times in (order if r % 2 == 0 else order[::-1]):
            times.append(timer.once(lambda: run(data)))
    ratios = np.asarray(ms_b) / np.asarray(ms_a)
    return dict(rounds=rounds, warmup=warmup, ms_a=_spread(ms_a), ms_b=_spread(ms_b),
                speedup=_spread(ratios), per_round=dict(ms_a=ms_a, ms_b=ms_b,
                                                        speedup=ratios.tolist()))
