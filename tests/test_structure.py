import copy

import numpy as np
import pytest
import torch
from mmdet.models.backbones import ResNet
from torch import nn

from mmdp.structure import (IdentityResidual, Structure, StructureChoice,
                            UnsupportedStructureError, derive_structure, mask_pruned_,
                            prune_copy)

# depth -> (prunable convs, removable blocks, channel groups)
COUNTS = {18: (20, 8, 12), 34: (36, 16, 20), 50: (53, 16, 37), 101: (104, 33, 71)}
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so pruning mistakes show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def resnet(depth: int, **kwargs) -> nn.Module:
    model = randomize_bn(ResNet(depth=depth, **kwargs))
    model.eval()
    return model


@pytest.mark.parametrize('depth', sorted(COUNTS))
def test_resnet_counts_and_coupling(depth):
    s = derive_structure(resnet(depth, out_indices=(2, 3)), (1, 3, 32, 32))
    assert (len(s.layers), len(s.blocks), len(s.groups)) == COUNTS[depth]
    bottleneck = depth >= 50
    last = 'conv3' if bottleneck else 'conv2'
    for stage, n_blocks in enumerate(STAGE_BLOCKS[depth], start=1):
        residual = f'layer{stage}.residual'
        assert s.layer(f'layer{stage}.0.{last}').group == residual
        for b in range(n_blocks):
            block = f'layer{stage}.{b}'
            assert s.layer(f'{block}.{last}').group == residual
            assert s.layer(f'{block}.conv1').group == f'{block}.conv1'  # inner: its own group
            assert s.layer(f'{block}.conv1').block == block
        has_projection = stage > 1 or bottleneck
        if has_projection:
            down = s.layer(f'layer{stage}.0.downsample.0')
            assert down.group == residual and down.block is None
            assert down.bn == f'layer{stage}.0.downsample.1'
        block = s.blocks[[b.name for b in s.blocks].index(f'layer{stage}.0')]
        assert block.shortcut == ((f'layer{stage}.0.downsample.0', f'layer{stage}.0.downsample.1')
                                  if has_projection else ())
    stem = s.layer('conv1')
    assert stem.input_group is None and stem.block is None and stem.bn == 'bn1'
    # A BasicBlock stage 1 adds the stem's output to its blocks' outputs: one group.
    assert stem.group == ('conv1' if bottleneck else 'layer1.residual')
    assert s.fixed_groups == [stem.group]  # the stem keeps its full width
    assert s.outputs == ['layer3.residual', 'layer4.residual']
    assert s.groups['layer4.residual'] == (2048 if bottleneck else 512)


def test_real_input_shapes():
    s = derive_structure(resnet(50), (2, 3, 64, 96))
    assert s.layer('conv1').input_shape == (2, 3, 64, 96)
    assert s.layer('conv1').output_shape == (2, 64, 32, 48)
    assert s.layer('layer3.0.conv1').input_shape == (2, 512, 8, 12)
    assert s.layer('layer3.0.conv2').input_shape == (2, 256, 8, 12)
    assert s.layer('layer3.0.conv2').output_shape == (2, 256, 4, 6)
    assert s.layer('layer3.0.downsample.0').output_shape == (2, 1024, 4, 6)
    assert Structure.from_dict(s.to_dict()) == s


def test_derivation_leaves_the_model_alone():
    model = ResNet(depth=18, with_cp=True)
    model.train()
    mean = model.bn1.running_mean.clone()
    s = derive_structure(model, (1, 3, 32, 32))
    assert len(s.layers) == 20
    assert torch.equal(model.bn1.running_mean, mean)
    assert model.training and model.layer1[0].with_cp


def build_detector(depth: int = 18):
    import mmdet3d.utils
    from mmdet3d.registry import MODELS
    mmdet3d.utils.register_all_modules(init_default_scope=False)
    channels = [256, 512] if depth < 50 else [1024, 2048]
    model = MODELS.build(dict(
        type='mmdet3d.MVXTwoStageDetector',
        img_backbone=dict(type='mmdet.ResNet', depth=depth, out_indices=(2, 3)),
        img_neck=dict(type='mmdet.FPN', in_channels=channels, out_channels=32, num_outs=2),
        data_preprocessor=dict(type='mmdet3d.Det3DDataPreprocessor')))
    randomize_bn(model)
    model.eval()
    return model


def test_detector_prefixes_and_neck_consumers():
    s = derive_structure(build_detector(), (2, 3, 32, 64))
    assert s.backbone == 'img_backbone'
    assert s.layers[0].name == 'img_backbone.conv1'
    assert s.layer('img_backbone.layer2.0.conv2').group == 'img_backbone.layer2.residual'
    assert [(c.name, c.group, c.in_channels) for c in s.consumers] == [
        ('img_neck.lateral_convs.0.conv', 'img_backbone.layer3.residual', 256),
        ('img_neck.lateral_convs.1.conv', 'img_backbone.layer4.residual', 512)]
    assert s.consumers[0].input_shape == (2, 256, 2, 4)


def random_choice(s: Structure, seed: int, removed: list) -> StructureChoice:
    rng = np.random.default_rng(seed)
    widths, channels = {}, {}
    for group, full in s.groups.items():
        widths[group] = int(rng.integers(1, full + 1))
        channels[group] = rng.choice(full, widths[group], replace=False).tolist()
    return StructureChoice(widths, removed, channels)


def check_masked_equals_sliced(model, s, choice, x):
    sliced = prune_copy(model, s, choice)
    masked = mask_pruned_(copy.deepcopy(model), s, choice)
    removed = [name for name, m in sliced.named_modules() if isinstance(m, IdentityResidual)]
    assert sorted(removed) == sorted(choice.removed_blocks)
    n_dense = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in sliced.parameters()) < n_dense
    with torch.no_grad():
        backbone = s.backbone
        get = (lambda m: m.get_submodule(backbone)) if backbone else (lambda m: m)
        outs_sliced, outs_masked = get(sliced)(x), get(masked)(x)
        for out_s, out_m, group in zip(outs_sliced, outs_masked, s.outputs):
            kept = choice.kept(s, group)
            pruned = sorted(set(range(s.groups[group])) - set(kept))
            assert out_s.shape[1] == len(kept)
            torch.testing.assert_close(out_s, out_m[:, kept], rtol=0, atol=1e-10)
            assert torch.count_nonzero(out_m[:, pruned]) == 0
        if s.consumers:
            for a, b in zip(sliced.img_neck(outs_sliced), masked.img_neck(outs_masked)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize('depth', [18, 50])
def test_full_choice_copy_equals_dense(depth):
    model = resnet(depth).double()
    s = derive_structure(model, (1, 3, 32, 64))
    x = torch.randn(1, 3, 32, 64, dtype=torch.float64)
    copied = prune_copy(model, s, StructureChoice())
    with torch.no_grad():
        for a, b in zip(model(x), copied(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('depth', [18, 50])
def test_masked_equals_sliced_backbone(depth):
    model = resnet(depth).double()
    s = derive_structure(model, (2, 3, 32, 64))
    # layer1.0 and layer2.0 (a projection block) and a plain block go.
    choice = random_choice(s, depth, ['layer1.0', 'layer2.0', 'layer3.1'])
    check_masked_equals_sliced(model, s, choice, torch.randn(2, 3, 32, 64, dtype=torch.float64))


def test_masked_equals_sliced_detector_with_neck():
    model = build_detector().double()
    s = derive_structure(model, (2, 3, 32, 64))
    choice = random_choice(s, 3, ['img_backbone.layer4.0', 'img_backbone.layer2.1'])
    check_masked_equals_sliced(model, s, choice, torch.randn(2, 3, 32, 64, dtype=torch.float64))
    pruned = prune_copy(model, s, choice)
    assert pruned.img_neck.lateral_convs[1].conv.in_channels == choice.widths[
        'img_backbone.layer4.residual']


def test_backbone_only_copy_of_a_detector_structure():
    model = build_detector()
    s = derive_structure(model, (1, 3, 32, 64))
    choice = StructureChoice({'img_backbone.layer3.residual': 128},
                             ['img_backbone.layer3.0'])
    net = prune_copy(model.img_backbone, s, choice, backbone_only=True)
    assert isinstance(net.layer3[0], IdentityResidual)
    assert net.layer3[0].shortcut[0].out_channels == 128
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 64))[0].shape[1] == 128


def test_choice_errors_name_the_culprit():
    s = derive_structure(resnet(18), (1, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown group 'nope'"):
        prune_copy(resnet(18), s, StructureChoice({'nope': 3}))
    with pytest.raises(ValueError, match=r"'layer2.residual': width 129 outside \[1, 128\]"):
        StructureChoice({'layer2.residual': 129}).check(s)
    with pytest.raises(ValueError, match="'layer9.0' is not a removable block"):
        StructureChoice(removed_blocks=['layer9.0']).check(s)
    with pytest.raises(ValueError, match='2 kept channels given for width 3'):
        StructureChoice({'layer1.0.conv1': 3}, channels={'layer1.0.conv1': [0, 1]}).check(s)


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.a(x))
        return torch.cat([y, y], 1)


def test_unsupported_structures_raise_clear_errors():
    with pytest.raises(UnsupportedStructureError, match='cat'):
        derive_structure(_Concat(), (1, 3, 8, 8))
    with pytest.raises(UnsupportedStructureError, match='not followed directly by a BatchNorm'):
        derive_structure(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), (1, 3, 8, 8))
    with pytest.raises(UnsupportedStructureError, match='groups=4'):
        derive_structure(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4)),
                         (1, 4, 8, 8))
    with pytest.raises(UnsupportedStructureError, match='Linear'):
        derive_structure(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Linear(8, 2)),
                         (1, 3, 8, 8))
