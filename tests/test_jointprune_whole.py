"""Whole-detector JointPruning: the head's coordinates in the pruning vector (hidden widths,
heads, decoder depth, token setting), their decoding through the same Ranking / to_choice /
StructureChoice path as channels and blocks, the sub-network evaluation of head choices with
the dense weights, the whole-detector latency per ladder size, and a short search through
tools/train.py whose fixed sub-network exports to a physically smaller detector."""
import copy
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.registry import init_default_scope

from mmdp.config_utils import load_config
from mmdp.export import export_pruned
from mmdp.jointprune import PruningSpace, build_sized_latency, subnetwork, taylor_ranking
from mmdp.jointprune.ranking import bn_gamma_ranking
from mmdp.latency import LatencyTable, make_meta
from mmdp.pruning import PruningMasks
from mmdp.structure import StructureChoice, derive_structure
from mmdp.structure.head import NECK_CONV, TOKENS
from projects.streampetr.fake_inputs import fake_frame

from formula_tables import whole_formula_table

CONFIG = 'configs/streampetr_jointprune45_whole_small_cpu.py'
HEAD = 'pts_bbox_head'
LADDER = [(64, 128), (48, 96)]  # small sizes keep the structures quick to derive
SETTINGS = ((30, 8, 32), (45, 16, 48), (60, 16, 64))  # the config's, dense last


@pytest.fixture(scope='module')
def model():
    init_default_scope('mmdet3d')
    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    net = MODELS.build(cfg.model)
    net.init_weights()
    return net.eval()


@pytest.fixture(scope='module')
def structure(model):
    return derive_structure(model, (6, 3, *LADDER[0]), head=HEAD)


def hand_saliency(structure):
    """Known head values: decoder layer i's parts are worth (3, 1, 2)[i] per unit; the FFN of
    layer 0 values unit j at j; self-attention heads of layer 0 at (5, 1, 7, 3, 0, 2, 6, 4);
    learnable query i at (7 i) mod 60 (a permutation), memory slots at 1."""
    rng = np.random.default_rng(0)
    values = {layer.name: torch.as_tensor(rng.uniform(size=layer.out_channels))
              for layer in structure.layers}
    for part in structure.valued_parts:
        if part.kind == TOKENS:
            values[part.name] = torch.cat([torch.as_tensor([(7.0 * i) % 60 for i in range(60)]),
                                           torch.ones(64)]).double()
        elif part.block is None:
            values[part.name] = torch.as_tensor(rng.uniform(size=part.units))
        else:
            layer = int(part.block.rsplit('.', 1)[1])
            values[part.name] = torch.full((part.units, ), (3.0, 1.0, 2.0)[layer]).double()
    values[f'{HEAD}.decoder.layers.0.ffn'] = torch.arange(512).double() * 3 / 511 * 2
    values[f'{HEAD}.decoder.layers.0.self_attn'] = torch.tensor(
        [5.0, 1, 7, 3, 0, 2, 6, 4]).double()
    return values


def test_the_vector_has_head_coordinates_only_for_a_whole_detector(model, structure):
    space = PruningSpace(structure, LADDER, chunk=128, divisor=16)
    head = [n for n in space.names if n.startswith(HEAD)]
    layers = [f'{HEAD}.decoder.layers.{i}' for i in range(3)]
    assert head == [f'{HEAD}.position_encoder.hidden.width'] + [
        f'{layer}.{p}.width' for layer in layers
        for p in ('ffn.hidden', 'self_attn.heads', 'cross_attn.heads')] + [
        f'{HEAD}.decoder.layers.depth', f'{HEAD}.tokens']
    assert space.names[-1] == 'img_size'
    kinds = {c.name: c.kind for c in space.coords}
    assert kinds[f'{HEAD}.decoder.layers.depth'] == 'depth'
    assert kinds[f'{HEAD}.tokens'] == 'tokens'
    assert space.cells[space.names.index(f'{HEAD}.tokens')] == 0.5  # 3 settings
    assert space.cells[space.names.index(f'{layers[0]}.self_attn.heads.width')] == \
        pytest.approx(1 / 6)  # one head of the 6 between 2 and 8
    full = space.full_setting()
    assert full.summary(space)['head'] == dict(
        widths={**{f'{HEAD}.position_encoder.hidden': 1024},
                **{f'{layer}.{g}': w for layer in layers
                   for g, w in (('ffn.hidden', 512), ('self_attn.heads', 8),
                                ('cross_attn.heads', 8))},
                f'{HEAD}.tokens': 60},
        decoder_layers=3, tokens=[60, 16, 64])
    backbone = PruningSpace(derive_structure(model, (6, 3, *LADDER[0])), LADDER, chunk=128,
                            divisor=16)
    assert not [n for n in backbone.names if n.startswith(HEAD)]
    assert backbone.names == [n for n in space.names if not n.startswith(HEAD)]
    with pytest.raises(ValueError, match='min_layers must lie in'):
        PruningSpace(structure, LADDER, divisor=16, min_layers=4)


def test_decoding_removes_the_least_important_head_units(structure):
    space = PruningSpace(structure, LADDER, chunk=128, divisor=16)
    ranking = taylor_ranking(structure, hand_saliency(structure), space.block_stages)
    u = np.ones(space.dim)
    u[space.names.index(f'{HEAD}.decoder.layers.depth')] = 0.5  # 1 + 0.5 * 2 = 2 layers
    u[space.names.index(f'{HEAD}.decoder.layers.0.ffn.hidden.width')] = 1 / 3  # 0.5 x 512
    u[space.names.index(f'{HEAD}.decoder.layers.0.self_attn.heads.width')] = 0.0  # 2 of 8
    u[space.names.index(f'{HEAD}.tokens')] = 0.2  # the first of 3 settings
    setting = space.decode(u)
    choice = space.to_choice(setting, ranking)
    # Layer 1 is worth least (1 per unit against 3 and 2): it goes first.
    assert ranking.blocks[f'{HEAD}.decoder.layers'] == tuple(
        f'{HEAD}.decoder.layers.{i}' for i in (1, 2, 0))
    assert choice.removed_blocks == {f'{HEAD}.decoder.layers.1'}
    assert choice.widths[f'{HEAD}.decoder.layers.0.ffn.hidden'] == 256
    assert choice.channels[f'{HEAD}.decoder.layers.0.ffn.hidden'] == list(range(256, 512))
    assert choice.channels[f'{HEAD}.decoder.layers.0.self_attn.heads'] == [2, 6]  # 7 and 6
    assert choice.widths[f'{HEAD}.tokens'] == 30
    assert choice.channels[f'{HEAD}.tokens'] == sorted(i for i in range(60) if (7 * i) % 60 >= 30)
    summary = setting.summary(space)['head']
    assert summary['decoder_layers'] == 2 and summary['tokens'] == [30, 8, 32]
    # Nothing else moved: full widths elsewhere, no backbone block removed.
    assert set(choice.widths) == {f'{HEAD}.decoder.layers.0.ffn.hidden',
                                  f'{HEAD}.decoder.layers.0.self_attn.heads', f'{HEAD}.tokens'}
    with pytest.raises(ValueError, match="importance='bn_gamma' ranks BN channels only"):
        bn_gamma_ranking(None, structure, space.stages)


def head_outputs(model, frames):
    model.reset_memory()
    outs = []
    with torch.no_grad():
        for frame in frames:
            data = model.data_preprocessor(copy.deepcopy(frame), False)
            outs.append([t for t in model._forward(data['inputs'], data['data_samples'])
                         if torch.is_tensor(t)])
    return outs


def test_sub_network_of_a_head_choice_equals_the_masked_detector(model, structure):
    """The dense weights under `subnetwork` compute what the pruning masks compute (the model
    fine-tuning and exporting starts from), and the memory is kept across the token setting,
    cut to its length, then put back whole."""
    space = PruningSpace(structure, LADDER, chunk=128, divisor=16)
    ranking = taylor_ranking(structure, hand_saliency(structure), space.block_stages)
    u = np.full(space.dim, 0.3)
    u[space.names.index('img_size')] = 1.0  # the full size: the masked model runs it too
    choice = space.to_choice(space.decode(u), ranking)
    assert {f'{HEAD}.tokens', f'{HEAD}.position_encoder.hidden'} <= set(choice.widths)
    assert any(b.startswith(HEAD) for b in choice.removed_blocks)
    frame = fake_frame(*LADDER[0], 0)
    masked = copy.deepcopy(model)
    masks = PruningMasks(structure, choice)
    masks.apply_(masked)
    handles = masks.bypass(masked)
    want = head_outputs(masked, [frame])
    for h in handles:
        h.remove()
    with subnetwork(model, structure, choice):
        got = head_outputs(model, [frame])
    for a, b in zip(want[0], got[0]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    dense = head_outputs(model, [frame])
    assert dense[0][0].shape[2] == 60 + 16 and got[0][0].shape[2] == 45 + 16
    # The memory of a dense frame, across the token setting.
    head = model.pts_bbox_head
    head_outputs(model, [frame])
    memory = {name: getattr(head, name).clone() for name in head.MEMORY}
    with subnetwork(model, structure, choice):
        assert head.memory_len == 48
        assert torch.equal(head.memory_embedding, memory['memory_embedding'][:, :48])
    assert head.memory_len == 64
    assert all(torch.equal(getattr(head, n), v) for n, v in memory.items())
    model.reset_memory()


# ---------------------------------------------------------------- latency per ladder size
def whole_table(model, size, scale: float, head_scale: float) -> LatencyTable:
    """A whole-detector table at `size` with known entries (`whole_formula_table`)."""
    return whole_formula_table(model, (6, 3, *size), 128, scale, head_scale, HEAD)


def hand_latency(structure, choice, scale, head_scale) -> float:
    widths = choice.all_widths(structure)
    total = scale * sum(layer.block not in choice.removed_blocks for layer in structure.layers)
    queries = widths[f'{HEAD}.tokens']
    for part in structure.parts:
        if part.block in choice.removed_blocks:
            continue
        w = widths[part.group]
        total += (0.5 * w if part.kind == TOKENS else scale / 100 * w if part.kind == NECK_CONV
                  else head_scale * w * (queries if part.input_group else 1))
    return total


def test_whole_latency_per_ladder_size_is_that_size_table(model, structure, tmp_path):
    factors = {LADDER[0]: (1.0, 1e-3), LADDER[1]: (0.5, 0.9e-3)}  # the head barely shrinks
    paths = {}
    for size, (scale, head_scale) in factors.items():
        paths[f'{size[0]}x{size[1]}'] = str(tmp_path / f'{size[0]}x{size[1]}.json')
        whole_table(model, size, scale, head_scale).save(paths[f'{size[0]}x{size[1]}'])
    latency = build_sized_latency(dict(type='lut_bilinear', fitted=False, tables=paths),
                                  structure, LADDER[0], LADDER)
    space = PruningSpace(structure, LADDER, chunk=128, divisor=16)
    ranking = taylor_ranking(structure, hand_saliency(structure), space.block_stages)
    for u in (np.ones(space.dim), np.full(space.dim, 0.3), np.zeros(space.dim)):
        choice = space.to_choice(space.decode(u), ranking)
        for size, (scale, head_scale) in factors.items():
            assert latency(choice, size) == pytest.approx(
                hand_latency(structure, choice, scale, head_scale), rel=1e-12)
    # Dense by hand: 53 convs of 1 ms; neck convs over 1024 + 2048 inputs; position encoder
    # 1024 units; per decoder layer FFN 512 and 2 x 8 heads at 60 queries; 60 tokens.
    dense = 53 + 30.72 + 1e-3 * (1024 + 3 * (512 + 16) * 60) + 0.5 * 60
    assert latency(StructureChoice(), LADDER[0]) == pytest.approx(dense)
    # One whole table for a ladder of two sizes: refused, naming the size without one.
    with pytest.raises(ValueError, match=r'needs a whole-detector latency table per ladder size'
                                         r'.*none for \[\(48, 96\)\]'):
        build_sized_latency(dict(type='lut_bilinear', fitted=False, table=paths['64x128']),
                            structure, LADDER[0], LADDER)
    with pytest.raises(ValueError, match=r'no table for ladder sizes \[\(32, 64\)\]'):
        build_sized_latency(dict(type='lut_bilinear', tables=paths), structure, LADDER[0],
                            [*LADDER, (32, 64)])
    with pytest.raises(ValueError, match='needs a whole-detector latency table'):
        build_sized_latency(dict(type='flops'), structure, LADDER[0], LADDER)
    # A backbone-only table at a smaller size does not price the head.
    small = derive_structure(model, (6, 3, *LADDER[1]))
    LatencyTable.new(small, make_meta('cpu', 'fp32', (6, 3, *LADDER[1]), 128, 'torch', 1,
                                      0)).save(paths['48x96'])
    with pytest.raises(ValueError, match=r"48x96.json: group 'pts_bbox_head\..*' is not the "
                                         'same in the table and the model'):
        build_sized_latency(dict(type='lut_bilinear', fitted=False, tables=paths), structure,
                            LADDER[0], LADDER)


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def searched(model, nusc_infos, tmp_path_factory):
    """Whole tables for the config's ladder (known entries, as above), then saliency over
    iteration 0, a search step before iteration 1, the fix after it, one fine-tuning
    iteration; the checkpoint exported."""
    tmp = tmp_path_factory.mktemp('jointprune_whole')
    cfg = load_config(CONFIG)
    tables = []
    for i, (h, w) in enumerate(cfg.ladder):
        path = str(tmp / f'{h}x{w}.json')
        # The head costs most here (its FFNs), so that the search cuts it too.
        whole_table(model, (h, w), 1.0 / (i + 1), 0.02).save(path)
        tables.append(f'custom_hooks.1.latency.tables.{h}x{w}={path}')
    work = str(tmp / 'work')
    root = nusc_infos['root'] + '/'
    proc = subprocess.run([
        sys.executable, 'tools/train.py', CONFIG, '--work-dir', work, '--cfg-options',
        f'train_dataloader.dataset.data_root={root}',
        f"train_dataloader.dataset.ann_file={nusc_infos['train']}", *tables,
        'train_dataloader.batch_size=1', 'train_cfg.max_iters=3', 'val_cfg=None',
        'val_dataloader=None', 'val_evaluator=None', 'default_hooks.checkpoint.interval=3',
        'custom_hooks.1.search_end=2', 'randomness.seed=0'], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = str(tmp / 'export')
    export_pruned(osp.join(work, 'jointprune_final_config.py'), osp.join(work, 'iter_3.pth'), out)
    return dict(work=work, out=out)


def test_search_over_the_whole_detector_and_export(searched):
    with open(osp.join(searched['work'], 'jointprune_trajectory.jsonl')) as f:
        steps = [json.loads(line) for line in f]
    assert [s['iter'] for s in steps] == [1]
    assert f'{HEAD}.tokens' in steps[0]['names'] and 'head' in steps[0]['setting']
    with open(osp.join(searched['work'], 'jointprune_solution.json')) as f:
        solution = json.load(f)
    meta = solution['meta']
    assert solution['latency'] <= meta['budget'] == pytest.approx(0.55 * meta['dense_latency'])
    assert not meta['scaled_sizes']
    assert f'{HEAD}.tokens' in solution['widths']
    final = load_config(osp.join(searched['work'], 'jointprune_final_config.py'))
    assert final.custom_hooks[1]['head_chunk'] == 128
    # The exported detector computes what the masked one does, at the chosen size.
    init_default_scope('mmdet3d')
    exported = MODELS.build(load_config(osp.join(searched['out'], 'pruned.py')).model)
    exported.load_state_dict(torch.load(osp.join(searched['out'], 'pruned.pth'),
                                        weights_only=False)['state_dict'])
    masked = MODELS.build(final.model)
    ckpt = torch.load(osp.join(searched['work'], 'iter_3.pth'), weights_only=False)
    masked.load_state_dict(ckpt['state_dict'])
    structure = derive_structure(masked, (6, 3, 96, 256), head=HEAD)
    head = {g: w for g, w in solution['widths'].items() if g.startswith(HEAD)}
    assert any(w < structure.groups[g] for g, w in head.items()), head  # the head was cut
    fixed = ckpt['jointprune']['fixed']
    choice = StructureChoice(fixed['widths'], fixed['removed_blocks'], fixed['channels'])
    PruningMasks(structure, choice).bypass(masked)
    masked.eval()
    exported.eval()
    h, w = solution['img_size']
    frames = [fake_frame(h, w, 0), fake_frame(h, w, 1)]
    for fa, fb in zip(head_outputs(masked, frames), head_outputs(exported, frames)):
        for ta, tb in zip(fa, fb):
            torch.testing.assert_close(tb, ta, rtol=1e-5, atol=5e-5)
