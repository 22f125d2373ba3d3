"""The frozen-backbone learning-curve config: BN calibrated once, the backbone untouched by
training, its outputs cached per image and equal to an uncached forward; a trainable backbone
and a random pipeline are refused."""
import subprocess
import sys

import pytest
import torch
from mmengine.runner import Runner
from torch.nn.modules.batchnorm import _BatchNorm

from mmdp.config_utils import load_config
from test_training import data_options

CONFIG = 'configs/streampetr_r50_small_cpu_frozen_backbone.py'
CALIB = 2


def runner_for(infos, work_dir, **options):
    options.update(item.split('=', 1) for item in data_options(infos))
    cfg = load_config(CONFIG, options)
    cfg.work_dir, cfg.launcher = str(work_dir), 'none'
    return Runner.from_cfg(cfg)


def test_training_leaves_the_backbone_as_calibrated(nusc_infos, tmp_path):
    runner = runner_for(nusc_infos, tmp_path, **{
        'train_cfg.max_iters': 6, 'train_cfg.val_interval': 100,
        'custom_hooks.0.calib_batches': CALIB, 'randomness.seed': 0})
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'FrozenBackboneFeatureCache')
    backbone = runner.model.img_backbone
    assert not any(p.requires_grad for p in backbone.parameters())
    norms = [m for m in backbone.modules() if isinstance(m, _BatchNorm)]
    # Cumulative statistics over exactly the calibration batches, none added in training.
    assert all(int(m.num_batches_tracked) == CALIB and not m.training for m in norms)
    # 6 training samples of 6 views seen twice in 6 steps of 2 (36 images cached, the second
    # pass hits), and the 36 images of the 6 val samples of the validation after the last step.
    assert len(hook.cache) == 72
    imgs = next(iter(runner.train_dataloader))
    imgs = runner.model.data_preprocessor(imgs, True)['inputs']['imgs'].flatten(0, 1)
    cached = backbone(imgs)
    with torch.no_grad():
        fresh = type(backbone).forward(backbone, imgs)
    for a, b in zip(cached, fresh):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_random_pipeline_overflows_the_cache_with_a_clear_error(nusc_infos, tmp_path):
    # The base config's random resize: every step brings new images.
    runner = runner_for(nusc_infos, tmp_path, **{
        'train_cfg.max_iters': 3, 'train_cfg.val_interval': 100,
        'custom_hooks.0.calib_batches': CALIB, 'custom_hooks.0.max_entries': 20,
        'train_dataloader.dataset.pipeline.4.resize_lim': (0.62, 0.68)})
    with pytest.raises(ValueError, match='more than 20 distinct backbone input images; is '
                                           'the train pipeline random'):
        runner.train()


def test_a_trainable_backbone_is_refused_in_one_line(nusc_infos, tmp_path):
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
         *data_options(nusc_infos), 'model.img_backbone.frozen_stages=-1'],
        capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'error: FrozenBackboneFeatureCache: model.img_backbone must be frozen')


def test_pruning_hooks_beside_it_are_refused(nusc_infos, tmp_path):
    options = dict(item.split('=', 1) for item in data_options(nusc_infos))
    cfg = load_config('configs/streampetr_mdp45_small_cpu.py', options)
    cfg.custom_hooks = [dict(type='FrozenBackboneFeatureCache'), *cfg.custom_hooks]
    cfg.work_dir, cfg.launcher = str(tmp_path), 'none'
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='FrozenBackboneFeatureCache is for dense training; '
                                         'this config also has SaliencyHook, PruningHook'):
        runner.train()
