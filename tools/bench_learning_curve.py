"""Learning curve of a detector: train a config for N iterations, evaluate nuScenes mAP / NDS on
its val split every K iterations (the config's own metric, the real nuscenes-devkit), and print
the curve. It is the end-to-end check that geometry, box coding and evaluation agree: a model
whose boxes land in the wrong place keeps mAP at 0 however low its loss goes.

    python tools/bench_learning_curve.py configs/streampetr_r50_small_cpu.py \
        --iters 3000 --interval 250 --work-dir work_dirs/curve

Writes WORK_DIR/learning_curve.json (one row per evaluation) and prints it as a table.
A benchmark, not a test: it takes as long as the training it runs.
"""
import argparse
import json
import os.path as osp
import sys
import time

from mmengine.config import DictAction
from mmengine.runner import Runner

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # the repo root

import mmdp.checkpoint_compat  # noqa: E402,F401  (checkpoint loading on torch >= 2.6)
from mmdp.config_utils import ConfigError, load_config  # noqa: E402
from mmdp.fileio import atomic_write_json  # noqa: E402

METRIC = 'NuScenes metric/pred_instances_3d_NuScenes/'
COLUMNS = ('mAP', 'NDS', 'mATE', 'mASE', 'mAOE')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--iters', type=int, required=True, help='training iterations')
    parser.add_argument('--interval', type=int, required=True,
                        help='evaluate every this many iterations (and at the end)')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, xxx=yyy; the key must exist')
    args = parser.parse_args(argv)
    if args.iters < 1 or not 1 <= args.interval <= args.iters:
        parser.error(f'need --iters >= 1 and 1 <= --interval <= --iters, got --iters '
                     f'{args.iters} --interval {args.interval}')
    return args


def set_schedule(cfg, iters: int, interval: int) -> None:
    """Train for `iters` with evaluation every `interval`; schedulers that ran to the config's
    last iteration run to the new one (a cosine decays over the whole run)."""
    old = cfg.train_cfg.max_iters
    cfg.recipe = None
    cfg.train_cfg.max_iters, cfg.train_cfg.val_interval = iters, interval
    for sched in cfg.get('param_scheduler') or []:
        if sched.get('end') == old:
            sched['end'] = iters
            if 'T_max' in sched:
                sched['T_max'] += iters - old
    cfg.default_hooks.checkpoint.interval = iters  # the final weights only
    # Metrics logged at the training iteration (MMEngine's default is the epoch: 0 here).
    cfg.default_hooks.logger.log_metric_by_epoch = False


def read_curve(rows: list, interval: int) -> list:
    """One row per evaluation: iteration, mean logged training loss since the previous one,
    metrics, and AP at 2 m per class (from the rows of MMEngine's scalars.json)."""
    losses = [(r['step'], r['loss']) for r in rows if 'loss' in r]
    curve = []
    for r in rows:
        if METRIC + 'mAP' not in r:
            continue
        step = r['step']
        recent = [v for s, v in losses if step - interval < s <= step]
        row = dict(iter=step, loss=sum(recent) / len(recent) if recent else None)
        row.update({c: r[METRIC + c] for c in COLUMNS})
        row['class_AP'] = {k[len(METRIC):-len('_AP_dist_2.0')]: v for k, v in r.items()
                           if k.startswith(METRIC) and k.endswith('_AP_dist_2.0')}
        curve.append(row)
    return curve


def format_curve(curve: list, seconds_per_iter: float) -> str:
    lines = [f'{"iter":>6} {"loss":>7} ' + ' '.join(f'{c:>6}' for c in COLUMNS)
             + '  AP@2m per class']
    for row in curve:
        loss = f'{row["loss"]:7.2f}' if row['loss'] is not None else f'{"-":>7}'
        per_class = ' '.join(f'{k[:5]}={v:.2f}' for k, v in row['class_AP'].items())
        lines.append(f'{row["iter"]:6d} {loss} ' + ' '.join(f'{row[c]:6.3f}' for c in COLUMNS)
                     + f'  {per_class}')
    lines.append(f'{seconds_per_iter:.2f} s per training iteration (evaluations excluded)')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.cfg_options)
    except ConfigError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    set_schedule(cfg, args.iters, args.interval)
    cfg.work_dir = args.work_dir
    cfg.launcher = 'none'
    runner = Runner.from_cfg(cfg)
    start = time.time()
    runner.train()
    scalars = osp.join(runner.log_dir, 'vis_data', 'scalars.json')
    if not osp.isfile(scalars):
        print(f'error: training left no {scalars}', file=sys.stderr)
        return 1
    with open(scalars) as f:
        rows = [json.loads(line) for line in f]
    curve = read_curve(rows, args.interval)
    times = [r['time'] for r in rows if 'loss' in r and 'time' in r]  # training rows only
    per_iter = sum(times) / len(times) if times else (time.time() - start) / args.iters
    atomic_write_json(osp.join(args.work_dir, 'learning_curve.json'),
                      dict(config=args.config, iters=args.iters, interval=args.interval,
                           seconds_per_iter=per_iter, wall_s=time.time() - start, curve=curve))
    print(format_curve(curve, per_iter))
    return 0


if __name__ == '__main__':
    sys.exit(main())
