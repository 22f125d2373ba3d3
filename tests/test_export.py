"""Export of a masked (dense-shaped) checkpoint to a physically smaller model: the exported model
computes what the masked one does, loads in tools/test.py and tools/benchmark.py, and refuses a
checkpoint of another structure, naming the first layer that does not fit."""
import copy
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

from mmdp.config_utils import load_config
from mmdp.export import PrunedResNet, StructureMismatchError, export_pruned
from mmdp.pruning import CHECKPOINT_KEY, PruningMasks, PruningState
from mmdp.structure import StructureChoice, derive_structure, prune_copy
from projects.streampetr.fake_inputs import fake_frame

CONFIG = 'configs/streampetr_mdp45_small_cpu.py'
REMOVED = ['img_backbone.layer2.1', 'img_backbone.layer3.2', 'img_backbone.layer4.0']


def randomize_bn(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def random_choice(structure, seed=0) -> StructureChoice:
    rng = np.random.default_rng(seed)
    widths, channels = {}, {}
    for group, full in structure.groups.items():
        widths[group] = int(rng.integers(full // 4, full)) if full > 64 else full
        channels[group] = sorted(rng.choice(full, widths[group], replace=False).tolist())
    return StructureChoice(widths, REMOVED, channels)


def build(config, checkpoint=None):
    cfg = load_config(config)
    init_default_scope('mmdet3d')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    if checkpoint:
        load_checkpoint(model, checkpoint, map_location='cpu')
    else:
        model.init_weights()
    return model.eval(), cfg


@pytest.fixture(scope='module')
def masked(tmp_path_factory):
    """A checkpoint as a pruning run writes it: random weights, a random structure choice
    (scattered channels, three removed blocks, one with a projection) masked in place."""
    model, _ = build(CONFIG)
    randomize_bn(model)
    structure = derive_structure(model, (1, 3, 64, 64))
    choice = random_choice(structure)
    PruningMasks(structure, choice).apply_(model)
    state = PruningState()
    state.update(choice, {'event': 1})
    path = str(tmp_path_factory.mktemp('masked') / 'iter_7.pth')
    torch.save({'meta': {'iter': 7}, 'state_dict': model.state_dict(),
                CHECKPOINT_KEY: state.to_dict()}, path)
    return dict(model=model, structure=structure, choice=choice, checkpoint=path)


@pytest.fixture(scope='module')
def exported(masked, tmp_path_factory):
    """tools/export_pruned.py CONFIG CHECKPOINT --out DIR."""
    out = str(tmp_path_factory.mktemp('exported'))
    spec = importlib.util.spec_from_file_location('export_tool', 'tools/export_pruned.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main([CONFIG, masked['checkpoint'], '--out', out])
    return dict(dir=out, config=osp.join(out, 'pruned.py'), weights=osp.join(out, 'pruned.pth'))


def run_detector(model, h, w, frames=2) -> list:
    model.reset_memory()
    outs = []
    with torch.no_grad():
        for i in range(frames):
            data = model.data_preprocessor(fake_frame(h, w, i), False)
            outs.append(model._forward(data['inputs'], data['data_samples']))
    return outs


def test_exported_config_and_weights(masked, exported):
    cfg = Config.fromfile(exported['config'])
    backbone = cfg.model.img_backbone
    structure, choice = masked['structure'], masked['choice']
    assert backbone.type == 'PrunedResNet' and backbone.depth == 50
    assert backbone.removed_blocks == [b[len('img_backbone.'):] for b in REMOVED]
    assert backbone.widths['layer3.residual'] == choice.widths['img_backbone.layer3.residual']
    assert cfg.model.img_neck.in_channels == [choice.widths['img_backbone.layer3.residual'],
                                              choice.widths['img_backbone.layer4.residual']]
    assert not [h for h in cfg.custom_hooks if h.type in ('SaliencyHook', 'PruningHook')]
    assert cfg.load_from == osp.abspath(exported['weights'])
    weights = torch.load(exported['weights'])
    assert weights['meta'][CHECKPOINT_KEY]['widths'] == choice.widths
    sliced = prune_copy(masked['model'], structure, choice).state_dict()
    assert weights['state_dict'].keys() == sliced.keys()
    assert all(torch.equal(weights['state_dict'][k], v) for k, v in sliced.items())


def test_masked_model_equals_exported_model(masked, exported):
    pruned, cfg = build(exported['config'], exported['weights'])
    dense = masked['model']
    n_dense = sum(p.numel() for p in dense.img_backbone.parameters())
    assert sum(p.numel() for p in pruned.img_backbone.parameters()) < 0.6 * n_dense
    h, w = cfg.img_size
    imgs = torch.rand(2, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = [copy.deepcopy(m.img_backbone).double()(imgs) for m in (dense, pruned)]
        necks = [copy.deepcopy(m.img_neck).double()(f) for m, f in zip((dense, pruned), feats)]
    for out_d, out_p, group in zip(feats[0], feats[1], masked['structure'].outputs):
        kept = masked['choice'].kept(masked['structure'], group)
        torch.testing.assert_close(out_p, out_d[:, kept], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(necks[1], necks[0], rtol=1e-12, atol=1e-12)
    # The whole detector (the head computes in float32), two frames to use its memory.
    for outs_d, outs_p in zip(run_detector(dense, h, w), run_detector(pruned, h, w)):
        for a, b in zip(outs_d, outs_p):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_a_checkpoint_of_another_structure_is_refused(exported):
    cfg = Config.fromfile(exported['config'])
    widths = dict(cfg.model.img_backbone.widths)
    widths['layer3.1.conv1'] -= 1
    widths['layer4.2.conv2'] -= 1
    cfg.model.img_backbone.widths = widths
    init_default_scope('mmdet3d')
    model = MODELS.build(cfg.model)
    with pytest.raises(StructureMismatchError,
                       match=r'img_backbone\.layer3\.1\.conv1: weight has shape'):
        load_checkpoint(model, exported['weights'], map_location='cpu')
    cfg.model.img_backbone.widths = dict(Config.fromfile(exported['config']).model.img_backbone
                                         .widths)
    cfg.model.img_backbone.removed_blocks = ['layer2.1', 'layer3.2']  # layer4.0 kept here
    model = MODELS.build(cfg.model)
    with pytest.raises(StructureMismatchError,
                       match=r'img_backbone\.layer4\.0\.shortcut\.0: weight is in the '
                             'checkpoint but not in the config'):
        load_checkpoint(model, exported['weights'], map_location='cpu')


def test_pruned_resnet_is_the_sliced_resnet():
    from mmdet.models.backbones import ResNet
    dense = ResNet(depth=18, out_indices=(2, 3))
    structure = derive_structure(dense, (1, 3, 64, 64))
    choice = StructureChoice({'layer2.residual': 96, 'layer3.0.conv1': 100}, ['layer3.1'])
    sliced = prune_copy(dense, structure, choice, backbone_only=True)
    pruned = PrunedResNet(widths=choice.widths, removed_blocks=['layer3.1'], depth=18,
                          out_indices=(2, 3))
    assert {k: v.shape for k, v in pruned.state_dict().items()} == {
        k: v.shape for k, v in sliced.state_dict().items()}
    pruned.load_state_dict(sliced.state_dict())
    with pytest.raises(StructureMismatchError, match=r'^layer2\.0\.conv2: weight has shape '
                                                     r'\(128, 128, 3, 3\) in the checkpoint'):
        pruned.load_state_dict(dense.state_dict())
    kept = prune_copy(dense, structure, StructureChoice(choice.widths), backbone_only=True)
    with pytest.raises(StructureMismatchError, match=r'^layer3\.1\.conv1: weight is in the '
                                                     'checkpoint but not in the config'):
        pruned.load_state_dict(kept.state_dict())
    with pytest.raises(ValueError, match='unknown group'):
        PrunedResNet(widths={'layer9.residual': 8}, depth=18)


def test_export_refuses_checkpoints_without_a_pruned_structure(masked, tmp_path):
    ckpt = torch.load(masked['checkpoint'])
    unmasked = dict(ckpt, state_dict={k: torch.ones_like(v) if v.is_floating_point() else v
                                      for k, v in ckpt['state_dict'].items()})
    cases = [({k: v for k, v in ckpt.items() if k != CHECKPOINT_KEY}, 'holds no pruning state'),
             (dict(ckpt, **{CHECKPOINT_KEY: PruningState().to_dict()}),
              'before the first pruning event'),
             (unmasked, 'is not zero on the channels')]
    for i, (data, message) in enumerate(cases):
        path = str(tmp_path / f'bad{i}.pth')
        torch.save(data, path)
        with pytest.raises(ValueError, match=message):
            export_pruned(CONFIG, path, str(tmp_path / f'out{i}'))
        assert not osp.exists(tmp_path / f'out{i}' / 'pruned.pth')


def data_options(infos):
    root = infos['root'] + '/'
    return [f'test_dataloader.dataset.data_root={root}',
            f'test_dataloader.dataset.ann_file={infos["val"]}',
            f'test_evaluator.data_root={root}', f'test_evaluator.ann_file={infos["val"]}']


def test_test_and_benchmark_tools_load_the_exported_pair(exported, nusc_infos):
    run = dict(check=True, capture_output=True, text=True)
    out = subprocess.run([sys.executable, 'tools/test.py', exported['config'], exported['weights'],
                          '--work-dir', osp.join(exported['dir'], 'test'), '--cfg-options',
                          *data_options(nusc_infos)], **run)
    assert 'NuScenes metric/pred_instances_3d_NuScenes/NDS' in out.stdout + out.stderr
    fps = osp.join(exported['dir'], 'fps.json')
    subprocess.run([sys.executable, 'tools/benchmark.py', exported['config'], exported['weights'],
                    '--fake-data', '--samples', '1', '--warmup', '0', '--out', fps], **run)
    with open(fps) as f:
        assert json.load(f)['fps'] > 0
