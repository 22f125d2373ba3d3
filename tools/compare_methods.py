"""Every method from one dense checkpoint, at one budget, with one saliency window and one
latency table, through the same fine-tuning, export, evaluation and paired speed-up; one report.

    python tools/compare_methods.py --budget 0.45 --out work_dirs/compare \
        [--dense-checkpoint CKPT] [--methods halp mdp mdp_whole jointprune torchprune]

On the small configs and the synthetic nuScenes (made as `make demo` makes it when absent). Without
`--dense-checkpoint` the dense model is trained first (configs/streampetr_r50_small_cpu.py). The
latency table is profiled once, for the whole detector: whole-detector MDP decides with it, the
backbone-only methods with its backbone part (the same timings), and every final structure is
priced with it; each method's saliency window is the same first `--window`
iterations from the dense weights, and the reference saliency that every final structure is
valued against is the whole-detector MDP run's (the backbone-only one's without it). Each step is
the command a user would type; finished steps are skipped when the job is run again.
Writes OUT/comparison.md and .json, and OUT/report/ (tools/report.py's figures over all runs).
"""
import argparse
import glob
import json
import os.path as osp
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

import mmdp.checkpoint_compat  # noqa: E402,F401  (checkpoint loading on torch >= 2.6)
import torch  # noqa: E402

from mmdp.cli import RunError, UsageError  # noqa: E402
from mmdp.latency import LatencyTable  # noqa: E402
from mmdp.pruning.state import CHECKPOINT_KEY, PruningState  # noqa: E402
from mmdp.report import collect_run, write_report  # noqa: E402
from mmdp.report.compare import load_reference, method_row, write_comparison  # noqa: E402
from mmdp.steps import last_checkpoint, run_step, synthetic_data  # noqa: E402
from mmdp.structure import StructureChoice  # noqa: E402

run = partial(run_step, 'compare')
DENSE = 'configs/streampetr_r50_small_cpu.py'
WHOLE = 'configs/streampetr_mdp45_whole_small_cpu.py'
# name: config. Hook 0 is the SaliencyHook, hook 1 the method's.
METHODS = {
    'halp': 'configs/streampetr_halp45_small_cpu.py',
    'mdp': 'configs/streampetr_mdp45_small_cpu.py',
    'mdp_whole': WHOLE,
    'jointprune': 'configs/streampetr_jointprune45_small_cpu.py',
    'torchprune': 'configs/streampetr_torchprune45_small_cpu.py',
}
HALP_STEPS = 10  # HALP prunes iteratively: this many knapsack steps, one iteration apart
SEARCH_STEPS = 5  # JointPruning's search steps after the window


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--budget', type=float, required=True,
                        help='prune ratio: each method removes this share of its modelled '
                             'latency (backbone-only methods: of the backbone)')
    parser.add_argument('--out', required=True, help='output folder (runs, report)')
    parser.add_argument('--dense-checkpoint', help='dense weights of the small config; '
                        'default: train them first')
    parser.add_argument('--methods', nargs='+', choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument('--window', type=int, default=10, help='saliency iterations')
    parser.add_argument('--finetune-iters', type=int, default=60,
                        help='training iterations in all, the window included')
    parser.add_argument('--step', type=int, default=64,
                        help="channels between the table's profiled widths: every method's "
                             'chunk (coarser: a faster profile, fewer reachable budgets)')
    parser.add_argument('--rounds', type=int, default=20, help='paired speed-up rounds')
    parser.add_argument('--scenes', type=int, default=10)
    parser.add_argument('--samples', type=int, default=20)
    args = parser.parse_args(argv)
    if args.step < 1:
        raise UsageError(f'--step must be >= 1 channel, got {args.step}')
    if not 0 < args.budget < 1:
        raise UsageError(f'--budget must lie in (0, 1), got {args.budget}')
    last_event = args.window + max(HALP_STEPS - 1, SEARCH_STEPS)
    if args.window < 1 or args.finetune_iters <= last_event:
        raise UsageError(f'need --window >= 1 and --finetune-iters > {last_event} (the last '
                         f'pruning or search step), got {args.window} and {args.finetune_iters}')
    return args


def method_options(name: str, args, table: str) -> list:
    """--cfg-options that give every method the same window, budget and table."""
    w, hook = args.window, 'custom_hooks.1'
    opts = [f'custom_hooks.0.end={w}', f'{hook}.prune_ratio={args.budget}']
    if name == 'jointprune':
        return opts + [f'{hook}.search_begin={w}', f'{hook}.search_end={w + SEARCH_STEPS}',
                       f'{hook}.chunk={args.step}',  # its widths on the table's grid
                       f'{hook}.latency.type=lut_bilinear', f'{hook}.latency.table={table}',
                       f'{hook}.latency.fitted=False']
    opts += [f'{hook}.latency_table={table}', f'{hook}.at_iter={w}']
    if name == 'halp':  # its window grows by the steps after the first
        opts[0] = f'custom_hooks.0.end={w + HALP_STEPS - 1}'
        opts += [f'{hook}.steps={HALP_STEPS}', f'{hook}.interval=1']
    return opts


def final_choice(checkpoint: str) -> StructureChoice:
    ckpt = torch.load(checkpoint, map_location='cpu', weights_only=False)
    return PruningState.from_dict(ckpt[CHECKPOINT_KEY]).choice()


def reference_file(work: str, methods: list) -> str:
    for name in ('mdp_whole', 'mdp'):
        if name in methods:
            found = sorted(glob.glob(osp.join(work, name, 'pruning', 'event1_*_saliency.json')))
            if found:
                return found[0]
    raise UsageError('the reference saliency comes from the mdp_whole or mdp run: include one '
                     'of them in --methods')


def jointprune_seconds(work_dir: str):
    path = osp.join(work_dir, 'jointprune_solution.json')
    if osp.isfile(path):
        with open(path) as f:
            return json.load(f)['seconds']
    return None


def benchmark(name: str, config: str, checkpoint: str, work_dir: str) -> None:
    """FPS and the per-part time breakdown of one model (fps.json in its work dir)."""
    out = osp.join(work_dir, 'fps.json')
    run(f'{name}: benchmark', ['tools/benchmark.py', config, checkpoint, '--fake-data',
                               '--samples', '10', '--warmup', '2', '--threads', '1', '--out', out],
        done=out)


def run_method(name: str, args, dense_ckpt: str, tables: dict, work: str, no_val: str):
    """Prune, fine-tune, export, evaluate, benchmark and time one method against dense."""
    config, out = METHODS[name], osp.join(work, name)
    iters = args.finetune_iters
    run(f'{name}: pruning and fine-tuning', [
        'tools/train.py', config, '--work-dir', out, '--cfg-options',
        f'load_from={dense_ckpt}',
        *method_options(name, args, tables['whole' if name == 'mdp_whole' else 'backbone']),
        f'train_cfg.max_iters={iters}', f'default_hooks.checkpoint.interval={iters}',
        no_val], done=osp.join(out, 'last_checkpoint'))
    ckpt = last_checkpoint(out)
    # JointPruning's sub-network may run at a smaller image size: its own final config.
    source = (osp.join(out, 'jointprune_final_config.py') if name == 'jointprune'
              else config)
    export = osp.join(out, 'export')
    run(f'{name}: export', ['tools/export_pruned.py', source, ckpt, '--out', export],
        done=osp.join(export, 'pruned.py'))
    pruned = (osp.join(export, 'pruned.py'), osp.join(export, 'pruned.pth'))
    run(f'{name}: evaluation', ['tools/test.py', *pruned, '--work-dir', out])
    benchmark(name, *pruned, out)
    run(f'{name}: paired speed-up', [
        'tools/speedup.py', *pruned, '--against', DENSE, dense_ckpt, '--rounds',
        str(args.rounds), '--warmup', '3', '--threads', '1', '--out',
        osp.join(out, 'speedup.json')], done=osp.join(out, 'speedup.json'))
    return name, out, ckpt


def main(argv=None):
    args = parse_args(argv)
    work = args.out
    no_val = f'train_cfg.val_begin={10**9}'
    synthetic_data('compare', args.scenes, args.samples)
    dense = osp.join(work, 'dense')
    if args.dense_checkpoint:
        if not osp.isfile(args.dense_checkpoint):
            raise UsageError(f'--dense-checkpoint {args.dense_checkpoint}: no such file')
        dense_ckpt = args.dense_checkpoint
    else:
        run('dense training', ['tools/train.py', DENSE, '--work-dir', dense, '--cfg-options',
                               no_val], done=osp.join(dense, 'last_checkpoint'))
        dense_ckpt = last_checkpoint(dense)
    run('evaluation (dense)', ['tools/test.py', DENSE, dense_ckpt, '--work-dir', dense])
    benchmark('dense', DENSE, dense_ckpt, dense)
    # One profile: the whole detector's; the backbone-only methods price with its backbone part.
    tables = {scope: osp.join(work, f'latency_table_{scope}.json')
              for scope in ('whole', 'backbone')}
    run('latency table', ['tools/profile_latency.py', WHOLE, '--out', tables['whole'], '--step',
                          str(args.step), '--repeats', '5', '--warmup', '1', '--samples', '12'],
        done=tables['whole'])
    if not osp.isfile(tables['backbone']):
        LatencyTable.load(tables['whole']).backbone_only().save(tables['backbone'])
    rows_in, failed = [], {}
    for name in args.methods:
        try:
            rows_in.append(run_method(name, args, dense_ckpt, tables, work, no_val))
        except RunError as e:  # one method's failure (an unreachable budget) is a result too
            print(f'[compare] {name}: {e}', flush=True)
            failed[name] = str(e)


    reference = load_reference(reference_file(work, args.methods))
    dense_record = collect_run(dense) if osp.isdir(dense) else None
    rows = []
    if dense_record is not None:
        dense_record.name = 'dense'
        rows.append(method_row(dense_record, StructureChoice(), reference, tables['whole']))
    records = [dense_record] if dense_record is not None else []
    for name, out, ckpt in rows_in:
        record = collect_run(out, name)
        records.append(record)
        seconds = jointprune_seconds(out) if name == 'jointprune' else None
        rows.append(method_row(record, final_choice(ckpt), reference, tables['whole'], seconds))
    path = write_comparison(rows, work, args.budget, tables['whole'], failed)
    if records:
        write_report(records, osp.join(work, 'report'))
    print(open(path).read())
    print(f'[compare] wrote {path}', flush=True)


if __name__ == '__main__':
    from mmdp.cli import entry  # noqa: E402
    entry(__file__, main)
