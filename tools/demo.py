"""The main job end to end on an embedded default: a synthetic nuScenes and its info files, a short
dense StreamPETR training, a latency table profiled on this machine's device, MDP-45% pruning with
a short fine-tuning, export to a smaller model, nuScenes evaluation and FPS of dense and pruned,
and the report. Each step is the command a user would type; data and a finished latency table are
reused when present."""
import argparse
import os.path as osp
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

from mmdp.steps import last_checkpoint, run_step, synthetic_data  # noqa: E402

run = partial(run_step, 'demo')

DENSE = 'configs/streampetr_r50_small_cpu.py'
MDP = 'configs/streampetr_mdp45_small_cpu.py'
# MDP-45%: Taylor saliency over the first SALIENCY_ITERS iterations from the dense weights, the
# one-shot event, then fine-tuning up to FINETUNE_ITERS in all.
SALIENCY_ITERS = 10
FINETUNE_ITERS = 60


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--scenes', type=int, default=10,
                        help='synthetic scenes (the mini split: 8 train, 2 val at 10)')
    parser.add_argument('--samples', type=int, default=20, help='key frames per scene')
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.samples < 2:
        parser.error(f'need --scenes >= 1 and --samples >= 2, got {args.scenes} and '
                     f'{args.samples}')
    start = time.time()
    work = args.work_dir
    dense, mdp = osp.join(work, 'dense'), osp.join(work, 'mdp45')
    table = osp.join(work, 'latency_table.json')
    # Evaluation is its own step below (MMEngine would also validate at the last iteration).
    no_val = f'train_cfg.val_begin={10**9}'

    synthetic_data('demo', args.scenes, args.samples)
    run('dense training', ['tools/train.py', DENSE, '--work-dir', dense, '--cfg-options', no_val])
    dense_ckpt = last_checkpoint(dense)
    run('latency table', ['tools/profile_latency.py', DENSE, '--out', table, '--step', '128',
                          '--repeats', '5', '--warmup', '1', '--samples', '12'], done=table)
    run('MDP-45% pruning and fine-tuning',
        ['tools/train.py', MDP, '--work-dir', mdp, '--cfg-options', f'load_from={dense_ckpt}',
         f'custom_hooks.1.latency_table={table}', f'custom_hooks.0.end={SALIENCY_ITERS}',
         f'custom_hooks.1.at_iter={SALIENCY_ITERS}', f'train_cfg.max_iters={FINETUNE_ITERS}',
         f'default_hooks.checkpoint.interval={FINETUNE_ITERS}', no_val])
    export = osp.join(mdp, 'export')
    run('export', ['tools/export_pruned.py', MDP, last_checkpoint(mdp), '--out', export])
    runs = [(dense, DENSE, dense_ckpt),
            (mdp, osp.join(export, 'pruned.py'), osp.join(export, 'pruned.pth'))]
    for work_dir, config, ckpt in runs:
        name = osp.basename(work_dir)
        run(f'evaluation ({name})', ['tools/test.py', config, ckpt, '--work-dir', work_dir])
        run(f'benchmark ({name})', ['tools/benchmark.py', config, ckpt, '--samples', '10',
                                    '--warmup', '2', '--latency-table', table, '--out',
                                    osp.join(work_dir, 'fps.json')])
    # The report's speed-up: both models timed alternately in one process, so a busy machine
    # slows both alike (one thread: two contend badly on a shared 2-core machine).
    run('paired speed-up', ['tools/speedup.py', runs[1][1], runs[1][2], '--against', DENSE,
                            dense_ckpt, '--rounds', '20', '--warmup', '3', '--threads', '1',
                            '--out', osp.join(mdp, 'speedup.json')])
    report = osp.join(work, 'report')
    run('report', ['tools/report.py', dense, mdp, '--out', report])
    print(f'[demo] done in {time.time() - start:.0f} s: the report is '
          f'{osp.join(report, "report.md")}', flush=True)


if __name__ == '__main__':
    from mmdp.cli import entry  # noqa: E402
    entry(__file__, main)
