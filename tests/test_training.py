"""The user's commands on the synthetic nuScenes: a short training run lowers the loss, a
checkpoint resumes on torch 2.13, and tools/test.py reports the nuScenes metrics."""
import glob
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

CONFIG = 'configs/streampetr_r50_small_cpu.py'
ITERS = 8


def data_options(infos):
    root = infos['root'] + '/'
    options = [f'train_dataloader.dataset.data_root={root}',
               f'train_dataloader.dataset.ann_file={infos["train"]}']
    for split in ('val', 'test'):  # the config's test_* are copies of its val_*
        options += [f'{split}_dataloader.dataset.data_root={root}',
                    f'{split}_dataloader.dataset.ann_file={infos["val"]}',
                    f'{split}_evaluator.data_root={root}',
                    f'{split}_evaluator.ann_file={infos["val"]}']
    return options


def tool(*args):
    return subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True)


def logged(work_dir, key):
    scalars = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(max(scalars)) as f:
        rows = [json.loads(line) for line in f]
    return [r[key] for r in rows if key in r]


@pytest.fixture(scope='module')
def trained(nusc_infos, tmp_path_factory):
    work = str(tmp_path_factory.mktemp('train'))
    tool('tools/train.py', CONFIG, '--work-dir', work, '--cfg-options', *data_options(nusc_infos),
         f'train_cfg.max_iters={ITERS}', 'train_cfg.val_interval=1000',
         'default_hooks.checkpoint.interval=4', 'randomness.seed=0')
    return work


def test_short_training_lowers_the_loss(trained):
    losses = logged(trained, 'loss')
    assert len(losses) == ITERS
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_checkpoint_resumes(trained, nusc_infos):
    ckpt = torch.load(osp.join(trained, 'iter_4.pth'), weights_only=False)
    assert ckpt['meta']['iter'] == 4
    tool('tools/train.py', CONFIG, '--work-dir', trained, '--resume',
         osp.join(trained, 'iter_4.pth'), '--cfg-options', *data_options(nusc_infos),
         'train_cfg.max_iters=5', 'train_cfg.val_interval=1000',
         'default_hooks.checkpoint.interval=5')
    resumed = torch.load(osp.join(trained, 'iter_5.pth'), weights_only=False)
    assert resumed['meta']['iter'] == 5
    # The optimizer state came back with the weights: AdamW's step count went on from 4.
    steps = [s['step'] for s in resumed['optimizer']['state'].values()]
    assert max(float(s) for s in steps) == 5


def test_evaluation_reports_nuscenes_metrics(trained, nusc_infos):
    out = tool('tools/test.py', CONFIG, osp.join(trained, f'iter_{ITERS}.pth'), '--work-dir',
               osp.join(trained, 'test'), '--cfg-options', *data_options(nusc_infos))
    assert 'NuScenes metric/pred_instances_3d_NuScenes/NDS' in out.stdout + out.stderr


def test_unknown_config_key_is_named(nusc_infos):
    proc = subprocess.run([sys.executable, 'tools/train.py', CONFIG, '--cfg-options',
                           'default_hooks.loger.interval=1'], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "'default_hooks.loger.interval' does not exist" in proc.stderr
    assert "'loger' is not a key of default_hooks" in proc.stderr
