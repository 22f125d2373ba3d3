"""The dense config is StreamPETR's 428q_nui_60e recipe (stream_petr_r50_flash_704_bs2_seq_428q_nui
_60e.py): optimizer, learning-rate schedule against mmcv's formulas, iteration counts, the fp16 /
activation-checkpointing GPU variants and the 24-epoch one."""
import copy
import math

import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS, init_default_scope

import projects.streampetr  # noqa: F401  (registers the model)
from mmdp.config_utils import scale_schedule

DENSE = 'configs/streampetr_r50_704_dense.py'
AMP_60E = 'configs/streampetr_r50_cpfpn_8xb2-amp-60e_nus-3d-704x256.py'
AMP_24E = 'configs/streampetr_r50_cpfpn_8xb2-amp-24e_nus-3d-704x256.py'

init_default_scope('mmdet3d')


def test_dense_config_holds_the_official_numbers():
    cfg = Config.fromfile(DENSE)
    assert cfg.train_dataloader.batch_size == 2
    train, val = cfg.train_dataloader.dataset, cfg.val_dataloader.dataset
    assert train.seq_split_num == 2 and val.get('seq_split_num', 1) == 1
    assert train.use_valid_flag is False
    assert cfg.train_dataloader.batch_sampler.type == 'StreamBatchSampler'
    optim = cfg.optim_wrapper
    assert optim.type == 'OptimWrapper'  # fp32: it also trains on CPU
    assert optim.optimizer == dict(type='AdamW', lr=4e-4, weight_decay=0.01)
    assert optim.paramwise_cfg == dict(custom_keys={'img_backbone': dict(lr_mult=0.1)})
    assert optim.clip_grad == dict(max_norm=35, norm_type=2)
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)
    assert cfg.model.img_backbone.with_cp is False


@pytest.mark.parametrize('config,epochs', [(DENSE, 60), (AMP_60E, 60), (AMP_24E, 24)])
def test_iterations_follow_streampetrs_count(config, epochs):
    cfg = Config.fromfile(config)
    # 8 GPUs x 2: StreamPETR's num_epochs * (28130 // (num_gpus * batch_size)).
    assert cfg.train_cfg.max_iters == epochs * (28130 // 16)
    scale_schedule(cfg, 8)
    assert cfg.train_cfg.max_iters == epochs * 1758
    cosine = cfg.param_scheduler[1]
    assert cosine.T_max == cosine.end == epochs * 1758
    scale_schedule(cfg, 1)  # one GPU: the same epochs, 8x the iterations
    assert cfg.train_cfg.max_iters == epochs * (28130 // 2)


def test_gpu_configs_add_fp16_and_activation_checkpointing_only():
    dense = Config.fromfile(DENSE).to_dict()
    for path, epochs in ((AMP_60E, 60), (AMP_24E, 24)):
        cfg = Config.fromfile(path).to_dict()
        assert cfg['optim_wrapper'].pop('type') == 'AmpOptimWrapper'
        assert cfg['optim_wrapper'].pop('loss_scale') == 'dynamic'  # mmcv's Fp16OptimizerHook
        assert cfg['model']['img_backbone'].pop('with_cp') is True
        assert cfg['recipe']['epochs'] == epochs
        other = copy.deepcopy(dense)
        other['optim_wrapper'].pop('type')
        other['model']['img_backbone'].pop('with_cp')
        for key in ('recipe', 'max_iters', 'train_cfg', 'param_scheduler'):
            cfg.pop(key), other.pop(key)
        assert cfg == other


def test_backbone_learns_at_a_tenth_of_the_rate():
    cfg = Config.fromfile(DENSE)
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lr_of = {id(p): g['lr'] for g in wrapper.optimizer.param_groups for p in g['params']}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len({id(p) for _, p in trainable} - lr_of.keys()) == 0
    for name, p in trainable:
        assert lr_of[id(p)] == pytest.approx(4e-5 if name.startswith('img_backbone.') else 4e-4)
    assert {g['weight_decay'] for g in wrapper.optimizer.param_groups} == {0.01}
    assert any(n.startswith('img_backbone.') for n, _ in trainable)


def official_lr(it, max_iters, base=4e-4):
    """mmcv's CosineAnnealing(min_lr_ratio=1e-3) with linear warm-up (500 iterations from 1/3),
    as StreamPETR's lr_config: the cosine lr times the warm-up factor."""
    target = base * 1e-3
    regular = target + 0.5 * (base - target) * (1 + math.cos(math.pi * it / max_iters))
    if it >= 500:
        return regular
    return regular * (1 - (1 - it / 500) * (1 - 1 / 3))


def test_learning_rate_schedule_is_streampetrs():
    cfg = Config.fromfile(DENSE)
    cfg.recipe = dict(epochs=3, samples_per_epoch=2000)  # 3000 iterations on one GPU
    scale_schedule(cfg, 1)
    max_iters = cfg.train_cfg.max_iters
    assert max_iters == 3000
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=4e-4, weight_decay=0.01)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer))
                  for s in cfg.param_scheduler]
    for it in range(max_iters):
        lr = optimizer.param_groups[0]['lr']
        assert lr == pytest.approx(official_lr(it, max_iters), rel=2e-3), it
        optimizer.step()
        for s in schedulers:
            s.step()


def test_activation_checkpointing_recomputes_and_keeps_the_gradients():
    backbone_cfg = Config.fromfile(AMP_60E).model.img_backbone
    torch.manual_seed(0)
    with_cp = MODELS.build(backbone_cfg)
    plain = MODELS.build({**backbone_cfg, 'with_cp': False})
    plain.load_state_dict(with_cp.state_dict())
    calls = []
    with_cp.layer1[0].conv1.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(1, 3, 64, 96)
    grads = []
    for net in (with_cp, plain):
        net.train()
        sum(o.sum() for o in net(x.clone().requires_grad_())).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()
                                if p.grad is not None]))
    assert len(calls) == 2  # forward, then again during backward
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
