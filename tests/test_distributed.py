"""`bash tools/dist_train.sh CONFIG 2` on a CPU machine (gloo): two processes train the small
MDP config through its pruning event; after it both ranks hold the same masks and weights (the
hook compares a digest of both across ranks and stops the run when they differ) and rank 0's
checkpoint carries the pruned structure. `bash tools/dist_test.sh` then evaluates that checkpoint on
two CPU processes."""
import os
import os.path as osp
import socket
import subprocess
import sys

import torch

from mmdp.latency.config import build_from_config
from mmdp.pruning import CHECKPOINT_KEY, PruningState
from formula_tables import whole_formula_table
from test_resume_kill import TABLE_DEVICE, TABLE_SHAPE, formula_table, small_model

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/streampetr_mdp45_small_cpu.py'
WHOLE_CONFIG = 'configs/streampetr_mdp45_whole_small_cpu.py'
WHOLE_SHAPE = (6, 3, 64, 128)  # six views, small: a short CPU profile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _dist_train(config, nusc_infos, work, env, *options):
    """Two gloo processes: saliency over iteration 0, the event before iteration 1, one
    fine-tuning iteration; returns the log."""
    root = nusc_infos['root'] + '/'
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', config, '2', '--work-dir', work, '--cfg-options',
         f'train_dataloader.dataset.data_root={root}',
         f'train_dataloader.dataset.ann_file={nusc_infos["train"]}', *options,
         'custom_hooks.0.end=1', 'custom_hooks.1.at_iter=1', 'train_cfg.max_iters=2',
         'default_hooks.checkpoint.interval=2', 'val_cfg=None', 'val_dataloader=None',
         'val_evaluator=None', 'randomness.seed=0'],
        capture_output=True, text=True, cwd=ROOT, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    return log


def test_dist_train_on_two_cpu_processes_through_a_pruning_event(nusc_infos, tmp_path):
    table = formula_table(small_model(), str(tmp_path / 'table.json'))
    root = nusc_infos['root'] + '/'
    work = str(tmp_path / 'work')
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()), OMP_NUM_THREADS='1')
    log = _dist_train(CONFIG, nusc_infos, work, env, f'latency_input_shape={TABLE_SHAPE}',
                      f'custom_hooks.1.latency_table={table}',
                      f'custom_hooks.1.latency_device={TABLE_DEVICE}')
    assert 'pruning event 1/1 at iteration 1' in log
    assert 'pruning event 1: masks and weights identical on all 2 ranks' in log
    ckpt = torch.load(osp.join(work, 'iter_2.pth'), map_location='cpu', weights_only=False)
    state = PruningState.from_dict(ckpt[CHECKPOINT_KEY])
    assert state.events_done == 1
    # One iteration: s is averaged over the ranks before |.|, as the official code sees it.
    assert state.history[0]['saliency_contributions'] == 1

    # The same checkpoint, evaluated on two CPU processes (contiguous shards, gathered metric).
    options = []
    for key in ('test_dataloader.dataset', 'test_evaluator'):
        options += [f'{key}.data_root={root}', f'{key}.ann_file={nusc_infos["val"]}']
    env['PORT'] = str(_free_port())
    proc = subprocess.run(
        ['bash', 'tools/dist_test.sh', CONFIG, osp.join(work, 'iter_2.pth'), '2', '--work-dir',
         str(tmp_path / 'test'), '--cfg-options', *options],
        capture_output=True, text=True, cwd=ROOT, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert 'NuScenes metric/pred_instances_3d_NuScenes/NDS' in log


def test_dist_train_of_the_whole_detector_keeps_both_ranks_identical(nusc_infos, tmp_path):
    """Head units (FFN, heads, position encoder) and decoder layers through the same event: the
    digest the hook compares covers the head's masks and weights too."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()), OMP_NUM_THREADS='1')
    # Known costs, the head's units the dearest (as in test_resume_whole): the event prunes the
    # head whatever the machine's load.
    table = str(tmp_path / 'table.json')
    model, _ = build_from_config(WHOLE_CONFIG, WHOLE_SHAPE)
    whole = whole_formula_table(model, WHOLE_SHAPE, 128, 0.01, 0.1, per_query=False)
    whole.meta['device'] = TABLE_DEVICE
    whole.save(table)
    work = str(tmp_path / 'work')
    log = _dist_train(WHOLE_CONFIG, nusc_infos, work, env, f'latency_input_shape={WHOLE_SHAPE}',
                      f'custom_hooks.1.latency_table={table}',
                      f'custom_hooks.1.latency_device={TABLE_DEVICE}')
    assert 'pruning event 1: masks and weights identical on all 2 ranks' in log
    ckpt = torch.load(osp.join(work, 'iter_2.pth'), map_location='cpu', weights_only=False)
    state = PruningState.from_dict(ckpt[CHECKPOINT_KEY])
    head_groups = [g for g in state.widths if g.startswith('pts_bbox_head')]
    assert state.events_done == 1 and head_groups, state.widths
