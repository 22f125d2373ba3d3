"""Whole-detector pruning: the head's dimensions (position encoder width, FFN widths, attention
heads, decoder layers) go through the same structure -> masks -> export path as the backbone."""
import copy
import glob
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

import mmdp.export.export as export_module
from mmdp.config_utils import load_config
from mmdp.importance import TaylorSaliency
from mmdp.pruning import CHECKPOINT_KEY, PruningMasks, PruningState
from mmdp.structure import Structure, StructureChoice, derive_structure, prune_copy
from projects.streampetr.fake_inputs import fake_frame
from tool_loader import load_tool

CONFIG = 'configs/streampetr_r50_small_cpu.py'
SHAPE = (6, 3, 64, 128)
HEAD = 'pts_bbox_head'
# (num_query, num_propagated, memory_len) besides the small config's dense (60, 16, 64).
TOKEN_SETTINGS = [(30, 8, 32), (45, 16, 48)]


@pytest.fixture(scope='module')
def model():
    cfg = load_config(CONFIG)
    cfg.model.pts_bbox_head.token_settings = TOKEN_SETTINGS
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


def random_choice(structure, removed, seed=0, tokens=TOKEN_SETTINGS[0][0]) -> StructureChoice:
    """Random widths and kept units; the token group at the setting of `tokens` queries."""
    rng = np.random.default_rng(seed)
    widths, channels = {}, {}
    for group, full in structure.groups.items():
        if group in structure.fixed_groups:
            continue
        widths[group] = (tokens if group == f'{HEAD}.tokens'
                         else int(rng.integers(max(1, full // 4), full + 1)))
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
    # The token setting: one group named by the learnable queries, read by every decoder part.
    tokens = structure.part(f'{HEAD}.tokens')
    assert structure.groups[f'{HEAD}.tokens'] == head.num_query
    assert tokens.settings == (*TOKEN_SETTINGS, (head.num_query, head.num_propagated,
                                                 head.memory_len))
    assert tokens.units == head.num_query + head.memory_len
    assert {p.input_group for p in structure.parts if p.block} == {f'{HEAD}.tokens'}


def run(model, frames):
    """Outputs of a 3-frame sequence whose third frame starts a new scene."""
    model.reset_memory()
    outs = []
    with torch.no_grad():
        for data in frames:
            data = model.data_preprocessor(copy.deepcopy(data), False)
            outs.append(model._forward(data['inputs'], data['data_samples']))
    return outs


@pytest.mark.parametrize('tokens', [setting[0] for setting in TOKEN_SETTINGS])
def test_masked_head_equals_exported_head_over_a_sequence(model, structure, tokens):
    """Widths, heads, a removed decoder layer and a token setting (fewer learnable queries,
    chosen by index; fewer propagated queries; a shorter memory) in both forms."""
    removed = ['img_backbone.layer3.1', f'{HEAD}.decoder.layers.0']
    choice = random_choice(structure, removed, tokens=tokens)
    num_query, num_propagated, memory_len = next(s for s in TOKEN_SETTINGS if s[0] == tokens)
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
    assert (head.num_query, head.num_propagated, head.memory_len) == (
        num_query, num_propagated, memory_len)
    assert head.reference_points.num_embeddings == num_query
    kept = choice.channels[f'{HEAD}.tokens']
    assert kept != list(range(num_query))  # queries chosen by index, not the first ones
    torch.testing.assert_close(head.reference_points.weight,
                               model.pts_bbox_head.reference_points.weight[kept])
    # The exported config's head (PrunedStreamPETRHead of the choice) takes these weights.
    cfg = load_config(CONFIG)
    spec = export_module._pruned_head(HEAD, structure, choice)
    assert spec['widths']['tokens'] == num_query
    built = MODELS.build(dict(cfg.model.pts_bbox_head, token_settings=TOKEN_SETTINGS, **spec))
    built.load_state_dict(head.state_dict(), strict=True)
    assert (built.num_query, built.num_propagated, built.memory_len) == (
        num_query, num_propagated, memory_len)
    frames = [fake_frame(*SHAPE[2:], 0, scene='a'), fake_frame(*SHAPE[2:], 1, scene='a'),
              fake_frame(*SHAPE[2:], 2, scene='b', prev_exists=False)]
    a, b = run(masked, frames), run(exported, frames)
    for fa, fb in zip(a, b):
        for ta, tb in zip(fa, fb):
            if torch.is_tensor(ta):
                torch.testing.assert_close(ta, tb, rtol=1e-5, atol=1e-5)
    assert a[0][0].shape[2] == num_query + num_propagated
    assert masked.pts_bbox_head.memory_embedding.shape[1] == memory_len
    for h in handles:
        h.remove()
    # Removing the handles puts the masked model back at the dense token counts.
    dense = run(masked, frames)
    full = model.pts_bbox_head
    assert dense[0][0].shape[2] == full.num_query + full.num_propagated


# ------------------------------------------------------------ end to end: train, export, test
WHOLE_CONFIG = 'configs/streampetr_mdp45_whole_small_cpu.py'
TABLE_SHAPE = (6, 3, 64, 128)  # six views at a small size keep the CPU profile short


@pytest.fixture(scope='module')
def whole_run(nusc_infos, tmp_path_factory):
    """Profile the whole-detector table, train through the event (saliency over iterations
    0-2, the event before iteration 3, fine-tuning iteration 3), export the checkpoint."""
    tmp = tmp_path_factory.mktemp('whole')
    table = str(tmp / 'table.json')
    load_tool('profile_latency').main([
        WHOLE_CONFIG, '--out', table, '--step', '128', '--repeats', '1', '--warmup', '1',
        '--samples', '3', '--input-shape', *map(str, TABLE_SHAPE)])
    work = str(tmp / 'work')
    root = nusc_infos['root'] + '/'
    proc = subprocess.run([
        sys.executable, 'tools/train.py', WHOLE_CONFIG, '--work-dir', work, '--cfg-options',
        f'train_dataloader.dataset.data_root={root}',
        f'train_dataloader.dataset.ann_file={nusc_infos["train"]}',
        f'latency_input_shape={TABLE_SHAPE}', f'custom_hooks.1.latency_table={table}',
        'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None', 'randomness.seed=0',
        'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=4'],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = str(tmp / 'exported')
    load_tool('export_pruned').main([WHOLE_CONFIG, osp.join(work, 'iter_4.pth'), '--out', out])
    return dict(work=work, out=out, infos=nusc_infos)


def test_the_event_solves_the_whole_program_and_pruned_entries_stay_zero(whole_run):
    problem_file, = glob.glob(osp.join(whole_run['work'], 'pruning', '*_problem.json'))
    with open(problem_file) as f:
        problem = json.load(f)
    # What the solver cuts depends on this CPU's timings; what it chose from does not.
    assert problem['version'] == 2
    assert problem['groups'][f'{HEAD}.decoder.layers.1.cross_attn.heads'] == dict(
        widths=list(range(1, 9)), kind='heads', unit=32)
    assert f'{HEAD}.decoder.layers.1' in problem['blocks']
    # The token setting is one group of the program, named by its learnable queries; every
    # decoder part's latency is a table over (its width, the setting).
    assert problem['groups'][f'{HEAD}.tokens'] == dict(
        widths=[30, 45, 60], kind='tokens', unit=1, settings=[
            dict(num_query=q, num_propagated=p, memory_len=m)
            for q, p, m in (*TOKEN_SETTINGS, (60, 16, 64))])
    layers = {layer['name']: layer for layer in problem['layers']}
    ffn = layers[f'{HEAD}.decoder.layers.0.ffn']
    assert ffn['input_group'] == f'{HEAD}.tokens' and all(len(row) == 3 for row in ffn['latency'])
    value = layers[f'{HEAD}.tokens']['importance']
    assert value[0] < value[1] < value[2]  # more queries and slots kept, more value
    names = set(layers)
    assert {f'{HEAD}.position_encoder', f'{HEAD}.decoder.layers.0.ffn',
            'img_neck.lateral_convs.0.conv'} <= names
    ckpt = torch.load(osp.join(whole_run['work'], 'iter_4.pth'), map_location='cpu',
                      weights_only=False)
    state = PruningState.from_dict(ckpt[CHECKPOINT_KEY])
    cfg = load_config(WHOLE_CONFIG)
    init_default_scope('mmdet3d')
    net = MODELS.build(cfg.model)
    structure = derive_structure(net, TABLE_SHAPE, head=HEAD)
    masks = PruningMasks(structure, state.choice())
    assert masks.masks
    # A fine-tuning iteration ran after the event: gradients and AdamW state of pruned
    # entries stayed zero, or these entries would have moved.
    for name, keep in masks.masks.items():
        param = ckpt['state_dict'][name]
        assert not param[~keep.expand_as(param)].any(), name


def test_exported_detector_equals_the_masked_one_and_the_tools_run_it(whole_run):
    cfg = load_config(osp.join(whole_run['out'], 'pruned.py'))
    init_default_scope('mmdet3d')
    exported = MODELS.build(cfg.model)
    load_checkpoint(exported, osp.join(whole_run['out'], 'pruned.pth'), map_location='cpu',
                    strict=True)
    exported.eval()
    masked_cfg = load_config(WHOLE_CONFIG)
    masked = MODELS.build(masked_cfg.model)
    ckpt = torch.load(osp.join(whole_run['work'], 'iter_4.pth'), map_location='cpu',
                      weights_only=False)
    masked.load_state_dict(ckpt['state_dict'])
    masked.eval()
    structure = derive_structure(masked, TABLE_SHAPE, head=HEAD)
    PruningMasks(structure, PruningState.from_dict(ckpt[CHECKPOINT_KEY]).choice()).bypass(masked)
    h, w = masked_cfg.img_size
    frames = [fake_frame(h, w, 0, scene='a'), fake_frame(h, w, 1, scene='a'),
              fake_frame(h, w, 2, scene='b', prev_exists=False)]
    # float32 through trained weights: sums over zeroed vs sliced units round differently,
    # seen up to 1.1e-5 on outputs of about 0.05 (the random-choice test above holds 1e-5).
    for fa, fb in zip(run(masked, frames), run(exported, frames)):
        for ta, tb in zip(fa, fb):
            if torch.is_tensor(ta):
                torch.testing.assert_close(ta, tb, rtol=1e-5, atol=5e-5)
    root = whole_run['infos']['root'] + '/'
    val = whole_run['infos']['val']
    proc = subprocess.run([
        sys.executable, 'tools/test.py', osp.join(whole_run['out'], 'pruned.py'),
        osp.join(whole_run['out'], 'pruned.pth'), '--work-dir', osp.join(whole_run['out'], 't'),
        '--cfg-options', f'test_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.ann_file={val}', f'test_evaluator.data_root={root}',
        f'test_evaluator.ann_file={val}'], capture_output=True, text=True)
    assert 'NuScenes metric/pred_instances_3d_NuScenes/NDS' in proc.stdout + proc.stderr, \
        proc.stderr[-3000:]


def head_loss(model, frame):
    model.reset_memory()
    data = model.data_preprocessor(copy.deepcopy(frame), False)
    outs = model._forward(data['inputs'], data['data_samples'])
    return sum(t.pow(2).mean() for t in outs if torch.is_tensor(t))


def test_head_saliency_is_the_gradient_of_a_unit_gate(model, structure):
    """The collector's value of a head unit is the window mean of |dL/dg| for a gate g = 1
    multiplying the unit (an MLP unit, or a head's 32 features) where the next Linear reads it,
    or a token (a learnable or propagated query, a memory slot) where the decoder reads it."""
    frames = [fake_frame(*SHAPE[2:], i) for i in range(2)]
    gated = copy.deepcopy(model)
    gates, handles = {}, []
    for part in structure.valued_parts:
        gate = torch.ones(part.units, requires_grad=True)
        gates[part.name] = gate

        def multiply(module, args, gate=gate, unit=part.unit):
            return (args[0] * gate.repeat_interleave(unit),)

        def multiply_tokens(module, args, gate=gate, settings=part.settings):
            # Learnable query i and propagated slot j scale their decoder query rows (content
            # and position), older memory slot j its rows of the memory keys.
            num_query, num_propagated, _ = settings[-1]
            query, query_pos, img, img_pos, memory, memory_pos, blocked = args
            rows = gate[:num_query + num_propagated][None, :, None]
            older = gate[num_query + num_propagated:][None, :, None]
            return (query * rows, query_pos * rows, img, img_pos, memory * older,
                    memory_pos * older, blocked)
        hook = multiply_tokens if part.kind == 'tokens' else multiply
        handles.append(gated.get_submodule(part.gate).register_forward_pre_hook(hook))
    expected = []
    for frame in frames:
        for gate in gates.values():
            gate.grad = None
        head_loss(gated, frame).backward()
        expected.append({n: g.grad.abs().double() for n, g in gates.items()})
    for h in handles:
        h.remove()

    net = copy.deepcopy(model)
    collector = TaylorSaliency(net, structure)
    collector.start()
    for frame in frames:
        collector.begin_iteration()
        head_loss(net, frame).backward()
        assert collector.end_iteration()
    collector.stop()
    average = collector.average()
    for part in structure.valued_parts:
        want = (expected[0][part.name] + expected[1][part.name]) / 2
        torch.testing.assert_close(average[part.name], want, rtol=1e-4, atol=1e-12)
        assert float(want.max()) > 0
    assert Structure.from_dict(structure.to_dict()) == structure


def test_a_backbone_only_latency_table_is_refused_for_a_whole_detector_run(model, structure):
    from mmdp.latency import LatencyTable, make_meta
    backbone_only = derive_structure(model, SHAPE)
    table = LatencyTable.new(backbone_only, make_meta('cpu', 'fp32', SHAPE, 128, 'torch', 1, 0))
    with pytest.raises(ValueError, match=r"part 'img_neck.lateral_convs.0.conv' \(head or neck\) "
                                         r"is only in the model: profile the table"):
        table.check_structure(structure)
    LatencyTable.new(structure, table.meta).check_structure(structure)


def test_pruned_head_units_keep_zero_gradients_and_optimizer_state(model, structure):
    net = copy.deepcopy(model)
    choice = random_choice(structure, [f'{HEAD}.decoder.layers.1'], seed=3)
    masks = PruningMasks(structure, choice)
    head_names = [n for n in masks.masks if n.startswith(HEAD)]
    assert head_names
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    head_loss(net, fake_frame(*SHAPE[2:], 0)).backward()
    optimizer.step()  # dense moments everywhere, as before a pruning event
    optimizer.zero_grad()
    handles = masks.enforce_(net, [optimizer])
    for step in range(2):
        head_loss(net, fake_frame(*SHAPE[2:], step)).backward()
        for name in head_names:
            param, keep = net.get_parameter(name), masks.masks[name].expand_as(
                net.get_parameter(name))
            if param.grad is not None:
                assert not param.grad[~keep].any(), name
        optimizer.step()
        optimizer.zero_grad()
    for name in head_names:
        param = net.get_parameter(name)
        keep = masks.masks[name].expand_as(param)
        assert not param[~keep].any(), name
        assert not optimizer.state[param]['exp_avg'][~keep].any(), name
    for h in handles:
        h.remove()
