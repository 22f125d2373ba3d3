"""The Torch-Pruning baseline: Torch-Pruning decides, mmdp masks, fine-tunes and exports.

On a small ResNet detector with a formula latency table: the ratio search lands on the smallest
ratio that fits the budget, kept widths follow `round_to`, and the masks of the translated choice
compute exactly what Torch-Pruning's physically pruned copy computes. Then the small CPU config
through `tools/train.py` (gradients and saliency, the event, fine-tuning) and the export.
"""
import copy
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmdp.export import export_pruned
from mmdp.latency import BilinearLutLatency
from mmdp.pruning import CHECKPOINT_KEY, PruningMasks, PruningState
from mmdp.solvers import Solution
from mmdp.structure import derive_structure
from mmdp.torchprune import (PruningView, WeightGradients, choice_from_pruned, find_ratio,
                             tp_choice)
from mmdp.torchprune.hook import CHECKPOINT_KEY as GRADIENTS_KEY

from formula_tables import formula_table
from test_export import build
from test_pruning_hooks import train as train_config
from test_pruning_hooks import (STEP, TABLE_SHAPE, TOY_SHAPE, ToyDetector, event_files, load_ckpt,
                                toy_data)

CONFIG = 'configs/streampetr_torchprune45_small_cpu.py'
CHUNK = 8


def random_gradients(model, structure, seed=0) -> dict:
    """Distinct weight gradients for every conv Torch-Pruning scores (no ties in its ranking)."""
    gen = torch.Generator().manual_seed(seed)
    names = [layer.name for layer in structure.layers] + [c.name for c in structure.consumers]
    return {n: torch.randn(model.get_submodule(n).weight.shape, generator=gen) for n in names}


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    torch.manual_seed(0)
    model = ToyDetector().eval()
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():  # BN statistics away from 0 / 1, so masking is tested
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen))
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=gen))
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen))
    structure = derive_structure(model, TOY_SHAPE)
    path = str(tmp_path_factory.mktemp('toy') / 'toy.json')
    latency = BilinearLutLatency(formula_table(model, TOY_SHAPE, CHUNK, path), fitted=False)
    return dict(model=model, structure=structure, latency=latency, path=path,
                gradients=random_gradients(model, structure))


def toy_view(toy) -> PruningView:
    view = PruningView(toy['model'], toy['structure'])
    view.set_gradients(toy['gradients'])
    return view


def test_the_ratio_search_lands_on_the_smallest_ratio_that_fits(toy):
    structure, latency = toy['structure'], toy['latency']
    view = toy_view(toy)

    def latency_at(ratio):
        return latency.predict(tp_choice(view, structure, ratio, CHUNK))
    dense = latency.predict(tp_choice(view, structure, 0.0, CHUNK))
    budget = 0.6 * dense
    tol = 1e-4
    ratio, evaluations = find_ratio(latency_at, budget, grid=0.05, tol=tol)
    assert latency_at(ratio) <= budget
    assert latency_at(ratio - tol) > budget  # a smaller ratio prunes less: over the budget
    assert [ratio, latency_at(ratio)] in evaluations
    # The scan: 0.05, 0.10, ... up to the first that fits; every ratio below the answer was over.
    assert evaluations[0][0] == 0.05
    assert all(lat > budget for r, lat in evaluations if r < ratio)


def test_an_unreachable_budget_names_the_smallest_latency(toy):
    with pytest.raises(ValueError, match=r'no Torch-Pruning ratio reaches the latency budget '
                                         r'0\.001 ms: the smallest latency over ratios '
                                         r'0\.5\.\.0\.5 is 5 ms \(ratio 0\.5\)'):
        find_ratio(lambda r: 5.0, 1e-3, grid=0.5, tol=0.1)


@pytest.mark.parametrize('ratio', [0.2, 0.45, 0.7])
def test_kept_widths_are_multiples_of_round_to_or_full(toy, ratio):
    structure = toy['structure']
    choice = tp_choice(toy_view(toy), structure, ratio, CHUNK)
    widths = choice.all_widths(structure)
    assert any(w < structure.groups[g] for g, w in widths.items())
    for group, width in widths.items():
        assert width == structure.groups[group] or width % CHUNK == 0, (group, width)
    for group in structure.fixed_groups:
        assert widths[group] == structure.groups[group]
    assert choice.removed_blocks == frozenset()


def test_the_masked_model_computes_what_torch_pruning_pruned(toy):
    model, structure = toy['model'], toy['structure']
    view = toy_view(toy)
    choice = tp_choice(view, structure, 0.45, CHUNK, prune=True)  # view is now pruned
    # Torch-Pruning keeps channels by importance, not a prefix: the indices must be honoured.
    assert any(kept != list(range(len(kept))) for kept in choice.channels.values())
    masked = copy.deepcopy(model)
    PruningMasks(structure, choice).apply_(masked)
    x = torch.randn(TOY_SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = view(x)
        feats = masked.img_backbone(x)
        got = masked.img_neck(feats)
        small = view.img_backbone(x)
    assert [e.shape for e in expected] == [g.shape for g in got]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-5)
    for out, group, pruned in zip(feats, structure.outputs, small):
        kept = choice.kept(structure, group)
        assert pruned.shape[1] == len(kept) < out.shape[1]
        torch.testing.assert_close(out[:, kept], pruned, rtol=0, atol=1e-5)
        assert not out[:, [c for c in range(out.shape[1]) if c not in kept]].any()


def test_a_coupling_mmdp_does_not_share_is_refused(toy):
    structure = toy['structure']
    stage = next(g for g in structure.groups if g.endswith('layer2.residual'))
    convs = [layer.name for layer in structure.layers if layer.group == stage]
    with pytest.raises(ValueError, match="coupling differs from mmdp's for group"):
        choice_from_pruned(structure, {convs[0]: [0, 1], convs[1]: [0, 2]})
    with pytest.raises(ValueError, match='img_neck.lateral_convs.0.conv, which is not a prunable'):
        choice_from_pruned(structure, {'img_neck.lateral_convs.0.conv': [0]})


def test_weight_gradients_are_the_window_mean_and_leave_frozen_weights_frozen():
    model = ToyDetector()
    model.train()  # mmdet's ResNet keeps its BN in eval mode (norm_eval)
    conv = model.img_backbone.layer1[0].conv1
    conv.weight.requires_grad_(False)
    other = model.img_backbone.layer1[0].conv2
    grads = WeightGradients(model, ['img_backbone.layer1.0.conv1', 'img_backbone.layer1.0.conv2'])
    grads.start()
    seen = []
    for i, sample in enumerate(toy_data(3)):
        grads.begin_iteration(loss_scale=2.0)
        loss = model([sample['inputs']], [sample['target']], mode='loss')['loss'] * 2.0
        loss.backward()
        assert conv.weight.grad is None  # dropped once read: a frozen weight is not trained
        seen.append(other.weight.grad.clone() / 2.0)
        other.weight.grad = None
        assert grads.end_iteration()
    grads.stop()
    assert not conv.weight.requires_grad and other.weight.requires_grad
    mean = grads.average()
    torch.testing.assert_close(mean['img_backbone.layer1.0.conv2'],
                               torch.stack(seen).mean(0), rtol=1e-5, atol=1e-7)
    assert mean['img_backbone.layer1.0.conv1'].abs().sum() > 0
    state = grads.state_dict()
    again = WeightGradients(model, ['img_backbone.layer1.0.conv1', 'img_backbone.layer1.0.conv2'])
    again.load_state_dict(state)
    assert again.count == 3 and torch.equal(again.sums, grads.sums)


# ---------------------------------------------------------------------- StreamPETR, tools/train.py
def train(work_dir, infos, table, *options):
    return train_config(work_dir, infos, table, *options, config=CONFIG)


@pytest.fixture(scope='module')
def table(tmp_path_factory):
    """The small config's backbone priced by formula at the test's input: whether a ratio
    reaches the budget must not depend on how busy this machine is (a table timed under load
    once made every ratio miss it)."""
    from mmdp.latency import device_name
    from mmdp.latency.config import build_from_config
    path = str(tmp_path_factory.mktemp('latency') / 'formula.json')
    model, _ = build_from_config(CONFIG, TABLE_SHAPE)
    formula_table(model, TABLE_SHAPE, STEP, path, device_name('cpu'))
    return path


@pytest.fixture(scope='module')
def run(nusc_infos, table, tmp_path_factory):
    """Gradients and saliency over iterations 0-2, the event before iteration 3, fine-tuning
    iteration 3; checkpoints after 2 (before the event) and 4 iterations."""
    work = str(tmp_path_factory.mktemp('torchprune'))
    log = train(work, nusc_infos, table, 'train_cfg.max_iters=4',
                'default_hooks.checkpoint.interval=2')
    return dict(work=work, log=log)


def test_training_prunes_with_torch_pruning_and_exports(run, tmp_path):
    work = run['work']
    assert event_files(work) == ['event1_iter3_problem.json', 'event1_iter3_solution.json',
                                 'event1_iter3_summary.json']
    assert 'pruning event 1/1 at iteration 3' in run['log']
    assert 'Torch-Pruning: ratio' in run['log']
    with open(osp.join(work, 'pruning', 'event1_iter3_summary.json')) as f:
        summary = json.load(f)
    with open(osp.join(work, 'pruning', 'event1_iter3_solution.json')) as f:
        solution = json.load(f)
    assert summary['solver']['type'] == 'torch-pruning'
    assert summary['saliency_contributions'] == summary['gradient_contributions'] == 3
    assert summary['problem_latency_ms'] <= summary['budget_ms'] * (1 + 1e-9)
    assert summary['predicted_ms']['after'] == pytest.approx(summary['problem_latency_ms'])
    assert 0 < summary['pruning_ratio'] == solution['pruning_ratio'] < 1
    assert [summary['pruning_ratio'], summary['problem_latency_ms']] in summary['ratio_search']
    kept = summary['kept_importance']
    assert 0 < kept['channels'] <= kept['saliency_order'] < kept['dense']
    assert kept['channels'] == pytest.approx(solution['objective'])

    before = load_ckpt(osp.join(work, 'iter_2.pth'))
    assert before[GRADIENTS_KEY]['count'] == 2
    after = load_ckpt(osp.join(work, 'iter_4.pth'))
    assert GRADIENTS_KEY not in after
    state = PruningState.from_dict(after[CHECKPOINT_KEY])
    model, _ = build(CONFIG)
    structure = derive_structure(model, TABLE_SHAPE)
    assert state.choice().all_widths(structure) == Solution.from_dict(solution).widths
    assert state.channels == solution['channels'] and state.removed_blocks == []
    for group, width in state.choice().all_widths(structure).items():
        assert width == structure.groups[group] or width % STEP == 0, (group, width)
    assert any(w < structure.groups[g] for g, w in state.widths.items())
    weights = after['state_dict']
    for layer in structure.layers:  # the fine-tuned weights live on the kept channels only
        alive = (weights[f'{layer.name}.weight'].flatten(1).abs().sum(1) > 0).nonzero()
        assert alive.flatten().tolist() == state.choice().kept(structure, layer.group)

    config, ckpt = export_pruned(CONFIG, osp.join(work, 'iter_4.pth'), str(tmp_path / 'export'))
    exported = Config.fromfile(config)
    assert exported.custom_hooks == []
    assert {f'img_backbone.{g}': w for g, w in exported.model.img_backbone.widths.items()} == {
        g: w for g, w in state.widths.items() if w != structure.groups[g]}
    small, _ = build(config)
    small.load_state_dict(load_ckpt(ckpt)['state_dict'], strict=True)
    assert sum(p.numel() for p in small.img_backbone.parameters()) < sum(
        p.numel() for p in model.img_backbone.parameters())


def test_resume_inside_the_window_goes_on_with_the_gradients(run, nusc_infos, table, tmp_path):
    work = str(tmp_path)
    train(work, nusc_infos, table, 'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=4',
          '--resume', osp.join(run['work'], 'iter_2.pth'))
    with open(osp.join(work, 'pruning', 'event1_iter3_summary.json')) as f:
        summary = json.load(f)
    assert summary['gradient_contributions'] == 3  # 2 restored + 1 collected
    assert summary['problem_latency_ms'] <= summary['budget_ms'] * (1 + 1e-9)
