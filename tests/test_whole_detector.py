"""Whole-detector pruning: the head's dimensions (position encoder width, FFN widths, attention
heads, decoder layers) go through the same structure -> masks -> export path as the backbone."""
import copy

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.registry import init_default_scope

from mmdp.config_utils import load_config
from mmdp.pruning import PruningMasks
from mmdp.structure import StructureChoice, derive_structure, prune_copy
from projects.streampetr.fake_inputs import fake_frame

CONFIG = 'configs/streampetr_r50_small_cpu.py'
SHAPE = (6, 3, 64, 128)
HEAD = 'pts_bbox_head'


@pytest.fixture(scope='module')
def model():
    cfg = load_config(CONFIG)
    init_default_scope('mmdet3d')
    torch.manual_seed(0)
    net = MODELS.build(cfg.model)
    net.init_weights()
    gen = torch.Generator().manual_seed(1)
    # Non-zero biases on the sliced Linears, so that a bias left unmasked would show (other
    # biases stay at their init: random class biases make near-ties in the memory's top-k,
    # which float rounding of the narrower matmuls then breaks either way).
    sliced = ('position_encoder.0.bias', 'ffn.0.bias', 'q_proj.bias', 'k_proj.bias',
              'v_proj.bias')
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(HEAD) and name.endswith(sliced):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net.eval()


@pytest.fixture(scope='module')
def structure(model):
    return derive_structure(model, SHAPE, head=HEAD)


def random_choice(structure, removed, seed=0) -> StructureChoice:
    rng = np.random.default_rng(seed)
    widths, channels = {}, {}
    for group, full in structure.groups.items():
        if group in structure.fixed_groups:
            continue
        widths[group] = int(rng.integers(max(1, full // 4), full + 1))
        channels[group] = sorted(rng.choice(full, widths[group], replace=False).tolist())
    return StructureChoice(widths, removed, channels)


def test_head_dimensions_are_parts_of_the_structure(model, structure):
    head = model.pts_bbox_head
    n_layers = len(head.decoder.layers)
    assert structure.groups[f'{HEAD}.position_encoder.hidden'] == \
        head.position_encoder[0].out_features
    for i in range(n_layers):
        layer = f'{HEAD}.decoder.layers.{i}'
        assert structure.groups[f'{layer}.ffn.hidden'] == head.decoder.layers[i].ffn[0].out_features
        assert structure.groups[f'{layer}.self_attn.heads'] == 8
        assert f'{layer}' in structure.block_names
    kinds = [p.kind for p in structure.parts]
    assert kinds.count('attention') == 2 * n_layers and kinds.count('mlp') == 1 + n_layers
    assert kinds.count('neck_conv') == len(structure.consumers)
    # Real token counts: every image token goes through the position encoder; cross-attention
    # keys are the image tokens, self-attention keys the queries and the memory.
    tokens = 6 * (SHAPE[2] // 16) * (SHAPE[3] // 16)
    assert structure.part(f'{HEAD}.position_encoder').shapes[0][1] == tokens
    cross = structure.part(f'{HEAD}.decoder.layers.0.cross_attn')
    assert cross.shapes[1][1] == tokens
    self_attn = structure.part(f'{HEAD}.decoder.layers.0.self_attn')
    assert self_attn.shapes[0][1] == head.num_query + head.num_propagated
    assert self_attn.shapes[1][1] == head.num_query + head.memory_len


def run(model, frames):
    """Outputs of a 3-frame sequence whose third frame starts a new scene."""
    model.reset_memory()
    outs = []
    with torch.no_grad():
        for data in frames:
            data = model.data_preprocessor(copy.deepcopy(data), False)
            outs.append(model._forward(data['inputs'], data['data_samples']))
    return outs


def test_masked_head_equals_exported_head_over_a_sequence(model, structure):
    removed = ['img_backbone.layer3.1', f'{HEAD}.decoder.layers.0']
    choice = random_choice(structure, removed)
    masked = copy.deepcopy(model)
    masks = PruningMasks(structure, choice)
    masks.apply_(masked)
    handles = masks.bypass(masked)
    exported = prune_copy(model, structure, choice)
    head = exported.pts_bbox_head
    assert head.position_encoder[0].out_features == choice.widths[
        f'{HEAD}.position_encoder.hidden']
    attn = head.decoder.layers[1].cross_attn
    assert attn.num_heads == choice.widths[f'{HEAD}.decoder.layers.1.cross_attn.heads']
    assert attn.q_proj.out_features == 32 * attn.num_heads
    assert type(head.decoder.layers[0]).__name__ == 'PassQuery'
    frames = [fake_frame(*SHAPE[2:], 0, scene='a'), fake_frame(*SHAPE[2:], 1, scene='a'),
              fake_frame(*SHAPE[2:], 2, scene='b', prev_exists=False)]
    a, b = run(masked, frames), run(exported, frames)
    for fa, fb in zip(a, b):
        for ta, tb in zip(fa, fb):
            if torch.is_tensor(ta):
                torch.testing.assert_close(ta, tb, rtol=1e-5, atol=1e-5)
    dense = run(model, frames)
    assert not torch.allclose(dense[0][0], a[0][0], atol=1e-3)  # the choice changed something
    for h in handles:
        h.remove()
