"""Cost of saliency collection per training iteration.

    python tools/measure_saliency_overhead.py CONFIG [--iters 10] [--warmup 2] [--out JSON]
        [--cfg-options key=value ...]

Runs training iterations of CONFIG on its own training data, alternating plain iterations with
iterations that collect Taylor saliency exactly as `SaliencyHook` does (hooks on every prunable
BN, frozen BN parameters given requires_grad, the per-iteration sum and finiteness check), and
prints the median and minimum time of each and their ratios. The weights train as usual.
"""
import argparse
import json
import statistics
import tempfile
import time

import torch
from mmengine.config import DictAction
from mmengine.runner import Runner

import mmdp.checkpoint_compat  # noqa: F401  (checkpoint loading on torch >= 2.6)
from mmdp.config_utils import load_config
from mmdp.fileio import atomic_write_json
from mmdp.hooks.runner_utils import bare_model, runner_structure
from mmdp.importance import TaylorSaliency


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('--iters', type=int, default=10, help='timed iterations of each kind')
    parser.add_argument('--warmup', type=int, default=2, help='untimed iterations first')
    parser.add_argument('--out', help='write the figures to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, xxx=yyy; the key must exist')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    cfg.work_dir = tempfile.mkdtemp(prefix='saliency_overhead_')
    runner = Runner.from_cfg(cfg)
    optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    model = runner.model
    collector = TaylorSaliency(bare_model(runner), runner_structure(runner))
    device = next(model.parameters()).device
    model.train()

    def batches():
        while True:
            yield from runner.train_dataloader

    data = batches()
    times = {'plain': [], 'saliency': []}
    for i in range(args.warmup + 2 * args.iters):
        kind = ('plain', 'saliency')[i % 2]
        batch = next(data)
        if kind == 'saliency':
            collector.start()
            collector.begin_iteration()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model.train_step(batch, optim_wrapper)
        if kind == 'saliency':
            collector.end_iteration()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        collector.stop()
        if i >= args.warmup:
            times[kind].append(elapsed * 1e3)
    result = {'config': args.config, 'device': str(device), 'iterations_each': args.iters}
    for kind, values in times.items():
        result[f'{kind}_ms'] = {'median': statistics.median(values), 'min': min(values)}
    # The minimum is the least disturbed by other work on a shared machine.
    result['ratio'] = {stat: result['saliency_ms'][stat] / result['plain_ms'][stat]
                       for stat in ('median', 'min')}
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    return result


if __name__ == '__main__':
    main()
