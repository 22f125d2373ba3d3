"""JointPruning: the estimator on synthetic objectives with a known optimum, the projection onto
the latency budget, the weight-sharing sub-networks of StreamPETR, and a short search end to end
through tools/train.py whose fixed sub-network stays masked while it fine-tunes and exports to a
physically smaller model."""
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmdet.models.backbones import ResNet
from mmdet3d.registry import MODELS
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from scipy.optimize import brentq, minimize

from mmdp.config_utils import load_config
from mmdp.export import export_pruned
from mmdp.jointprune import (InfeasibleBudgetError, LatencyProjection, PruningSpace,
                             SelfAdaptedGradient, SubnetLoss, bn_gamma_ranking,
                             build_sized_latency, preserved_stream_state, resize_batch,
                             subnetwork, taylor_ranking)
from mmdp.latency import FlopsLatency, LatencyTable, make_meta
from mmdp.structure import StructureChoice, derive_structure, prune_copy
from projects.streampetr.fake_inputs import add_fake_ground_truth, fake_frame

CONFIG = 'configs/streampetr_jointprune45_small_cpu.py'


# ---------------------------------------------------------------- synthetic objectives
def box_budget_problem(seed: int, dim: int = 9):
    """A random linear latency a.u <= 0.55 sum(a) over [0, 1]^dim, with its projection."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, dim)
    budget = 0.55 * a.sum()
    projection = LatencyProjection(lambda u: float(a @ u), budget, np.full(dim, 1e-3))
    return rng, a, budget, projection


def reference_optimum(at_multiplier, a, budget):
    """The KKT point of a separable convex loss under a.u <= budget on the box: u(mu) minimises
    the Lagrangian coordinate-wise; the budget binds, so a.u(mu) = budget fixes mu."""
    return at_multiplier(brentq(lambda mu: a @ at_multiplier(mu) - budget, 0.0, 1e3,
                                xtol=1e-14))


def quadratic(rng, a):
    """Targets partly beyond the box: the optimum sits on the budget and on some box bounds."""
    c, t = rng.uniform(0.5, 3.0, len(a)), rng.uniform(0.6, 1.4, len(a))
    return (lambda u: float(np.sum(c * (u - t)**2)),
            lambda mu: np.clip(t - mu * a / (2 * c), 0.0, 1.0))


def log_utility(rng, a):
    """Separable and decreasing in every coordinate (more of everything helps), as a loss of
    width, depth and resolution would be."""
    w = rng.uniform(0.2, 1.0, len(a))
    return (lambda u: float(-np.sum(w * np.log(0.1 + u))),
            lambda mu: np.clip(w / max(mu, 1e-12) / a - 0.1, 0.0, 1.0))


@pytest.mark.parametrize('objective', [quadratic, log_utility])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_estimator_converges_to_the_constrained_optimum(objective, seed):
    dim, steps = 9, 400
    rng, a, budget, projection = box_budget_problem(seed, dim)
    f, at_multiplier = objective(rng, a)
    optimum = reference_optimum(at_multiplier, a, budget)
    noise = np.random.default_rng(100 + seed)
    est = SelfAdaptedGradient(projection(np.ones(dim)), pairs=3, step=0.1, sigma=0.05,
                              step_range=(1e-7, 0.5), sigma_range=(1e-7, 0.3), seed=seed)
    for _ in range(steps):
        shared = noise.normal()  # one batch per step: noise common to the step's evaluations
        est.step(lambda v: f(v) + shared, projection,
                 normal=lambda u: projection.normal(u, est.sigma))
        assert a @ est.u <= budget * (1 + 1e-9)
    # Half the finest rounding cell of the real space (the 32-channel step of 2048 channels).
    assert np.abs(est.u - optimum).max() < 1e-2, (est.u, optimum)
    assert f(est.u) - f(optimum) < 2e-3


def test_estimator_state_round_trips():
    _, a, budget, projection = box_budget_problem(0, 4)
    est = SelfAdaptedGradient(projection(np.ones(4)), seed=3)
    est.step(lambda v: float(np.sum((v - 0.9)**2)), projection)
    again = SelfAdaptedGradient(np.zeros(4), seed=3)
    again.load_state_dict(json.loads(json.dumps(est.state_dict())))
    assert again.state_dict() == est.state_dict()
    assert np.array_equal(again.directions(), est.directions())


# ---------------------------------------------------------------- projection
def test_projection_is_euclidean_for_a_linear_latency():
    _, a, budget, projection = box_budget_problem(5, 6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = rng.uniform(0.0, 1.2, 6)
        p = projection(w)
        exact = minimize(lambda u: np.sum((u - w)**2), np.zeros(6), jac=lambda u: 2 * (u - w),
                         bounds=[(0, 1)] * 6, method='SLSQP',
                         constraints=[dict(type='ineq', fun=lambda u: budget - a @ u)],
                         options=dict(ftol=1e-15)).x
        assert np.abs(p - exact).max() < 1e-5


@pytest.fixture(scope='module')
def bare_space():
    """The pruning space of a bare ResNet-50 at the small config's input, its ranking and MACs
    latency, with the small config's ladder."""
    backbone = ResNet(depth=50, out_indices=(2, 3))
    backbone.eval()
    structure = derive_structure(backbone, (6, 3, 96, 256))
    space = PruningSpace(structure, [(96, 256), (80, 224), (64, 192)], divisor=16,
                         prune_residual=True)
    ranking = bn_gamma_ranking(backbone, structure, space.stages)
    latency = build_sized_latency(dict(type='flops'), structure, space.full_size, space.ladder)

    def latency_of(u):
        setting = space.decode(u)
        return latency(space.to_choice(setting, ranking), setting.size)
    return space, ranking, latency_of


def test_space_maps_vectors_to_sub_networks(bare_space):
    space, ranking, latency_of = bare_space
    assert space.dim == 16 * 2 + 4 * 2 + 1  # a width per inner group, residual + depth per stage
    full = space.full_setting()
    assert space.to_choice(full, ranking) == StructureChoice()
    assert latency_of(np.ones(space.dim)) == pytest.approx(1.0)
    small = space.decode(np.zeros(space.dim))
    assert small.size == (64, 192)
    summary = small.summary(space)['stages']['layer3']
    assert summary == dict(widths=[64] * 12, residual=256, depth=1)  # 25% of 256, 1024; 1 block
    choice = space.to_choice(small, ranking)
    assert len(choice.removed_blocks) == 3 + 4 + 6 + 3 - 4
    # Untrained BN: equal scores, so the first channels and the first blocks stay.
    assert choice.kept(space.structure, 'layer3.residual') == list(range(256))
    assert 'layer3.0' not in choice.removed_blocks
    assert 0.02 < latency_of(np.zeros(space.dim)) < 0.05  # 1/2 the pixels, ~1/16 the convs
    with pytest.raises(ValueError, match='multiples of 16'):
        PruningSpace(space.structure, [(96, 256), (72, 200)], divisor=16)
    with pytest.raises(ValueError, match='largest image area'):
        PruningSpace(space.structure, [(64, 192), (96, 256)], divisor=16)


def test_taylor_ranking_orders_channels_and_blocks(bare_space):
    space, _, _ = bare_space
    st = space.structure
    rng = np.random.default_rng(0)
    saliency = {layer.name: torch.as_tensor(rng.normal(size=layer.out_channels))
                for layer in st.layers}
    stage = space.stages[2]  # layer3
    for i, block in enumerate(stage.blocks):  # block i of layer3 is worth (6 - i)
        for name in next(b for b in st.blocks if b.name == block).layers:
            saliency[name] = torch.full((st.layer(name).out_channels, ), 6.0 - i)
    ranking = taylor_ranking(st, saliency, space.stages)
    assert ranking.blocks['layer3'] == tuple(reversed(stage.blocks))
    group = 'layer2.residual'
    total = sum(saliency[layer.name] for layer in st.layers if layer.group == group).abs()
    assert ranking.channels[group] == torch.argsort(-total, stable=True).tolist()


def test_projection_always_lands_within_budget(bare_space):
    space, _, latency_of = bare_space
    projection = LatencyProjection(latency_of, 0.55, space.cells)
    rng = np.random.default_rng(0)
    for w in [np.ones(space.dim), *rng.uniform(0, 1, (40, space.dim)),
              *(rng.uniform(0, 1, (20, space.dim)) ** 0.1)]:
        p = projection(w)
        assert latency_of(p) <= 0.55 * (1 + 1e-9)
        assert np.all((0 <= p) & (p <= 1))
        if latency_of(w) <= 0.55:
            assert np.array_equal(p, w)
    with pytest.raises(InfeasibleBudgetError, match='below the latency of the smallest'):
        LatencyProjection(latency_of, 0.01, space.cells)


def test_latency_tables_per_ladder_size(tmp_path):
    """One table per ladder size (here filled with MACs, as a profile would be with timings):
    each size reads its own; one table alone scales with the pixel count."""
    backbone = ResNet(depth=50, out_indices=(2, 3))
    backbone.eval()
    ladder = [(96, 256), (64, 192)]
    paths, dense = {}, {}
    for h, w in ladder:
        structure = derive_structure(backbone, (6, 3, h, w))
        table = LatencyTable.new(structure, make_meta('cpu', 'fp32', (6, 3, h, w), 32, 'torch',
                                                      1, 0))
        for layer in structure.layers:
            ins = table.widths[layer.input_group] if layer.input_group else None
            table.tables[layer.name] = (1e-9 * FlopsLatency.macs(
                layer, table.widths[layer.group], ins)).tolist()
        paths[f'{h}x{w}'] = str(tmp_path / f'{h}x{w}.json')
        table.save(paths[f'{h}x{w}'])
        dense[(h, w)] = 1e-9 * sum(float(np.ravel(FlopsLatency.macs(
            layer, [layer.out_channels], [layer.in_channels] if layer.input_group else None))[0])
            for layer in structure.layers)
    full = derive_structure(backbone, (6, 3, *ladder[0]))
    per_size = build_sized_latency(dict(type='lut_bilinear', fitted=False, tables=paths), full,
                                   ladder[0], ladder)
    assert not per_size.scaled_sizes
    for size in ladder:
        assert per_size(StructureChoice(), size) == pytest.approx(dense[size])
    one = build_sized_latency(dict(type='lut_bilinear', fitted=False, table=paths['96x256']),
                              full, ladder[0], ladder)
    assert one.scaled_sizes
    assert one(StructureChoice(), (64, 192)) == pytest.approx(dense[(96, 256)] * 0.5)
    with pytest.raises(ValueError, match=r'no table for ladder sizes \[\(80, 224\)\]'):
        build_sized_latency(dict(type='lut_bilinear', tables=paths), full, ladder[0],
                            [*ladder, (80, 224)])
    with pytest.raises(ValueError, match='needs a table model'):
        build_sized_latency(dict(type='measured'), full, ladder[0], ladder)


# ---------------------------------------------------------------- sub-networks of StreamPETR
@pytest.fixture(scope='module')
def detector():
    """The small config's StreamPETR with non-trivial BN, its structure, space and ranking, and
    one preprocessed training batch."""
    init_default_scope('mmdet3d')
    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.img_backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    model.train()
    structure = derive_structure(model, cfg.latency_input_shape)
    space = PruningSpace(structure, cfg.ladder, divisor=16, prune_residual=True)
    ranking = bn_gamma_ranking(model, structure, space.stages)
    h, w = cfg.img_size
    frames = [add_fake_ground_truth(fake_frame(h, w, 0))]
    batch = dict(inputs=dict(img=[f['inputs']['img'][0] for f in frames]),
                 data_samples=[f['data_samples'][0] for f in frames])
    data = model.data_preprocessor(batch, True)
    return model, structure, space, ranking, data


def reduced(space):
    u = np.full(space.dim, 0.4)
    return space.decode(u)


def dense_loss(model, data, seed):
    with torch.no_grad(), preserved_stream_state(model), torch.random.fork_rng():
        torch.manual_seed(seed)
        loss, _ = model.parse_losses(model.loss(data['inputs'], data['data_samples']))
    return float(loss)


def predictions(model, data, size=None):
    imgs, samples = data['inputs']['imgs'], data['data_samples']
    if size is not None:
        imgs, samples = resize_batch(imgs, samples, size)
    model.eval()
    model.reset_memory()
    try:
        with torch.no_grad():
            out = model.predict({'imgs': imgs}, samples)
    finally:
        model.train()
        model.reset_memory()
    return torch.cat([out[0].pred_instances_3d.scores_3d,
                      out[0].pred_instances_3d.bboxes_3d.tensor.flatten()])


def test_full_vector_reproduces_the_dense_model(detector):
    model, structure, space, ranking, data = detector
    full = space.full_setting()
    choice = space.to_choice(full, ranking)
    loss = SubnetLoss(model, structure, data['inputs'], data['data_samples'], seed=7)
    assert loss(choice, full.size) == dense_loss(model, data, seed=7)
    dense = predictions(model, data)
    with subnetwork(model, structure, choice):
        assert torch.equal(predictions(model, data, full.size), dense)


def test_reduced_vector_changes_outputs_and_the_context_restores(detector):
    model, structure, space, ranking, data = detector
    setting = reduced(space)
    choice = space.to_choice(setting, ranking)
    assert choice.widths and choice.removed_blocks and setting.size != space.full_size
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    dense = predictions(model, data)
    loss = SubnetLoss(model, structure, data['inputs'], data['data_samples'], seed=7)
    assert loss(choice, setting.size) != dense_loss(model, data, seed=7)
    with subnetwork(model, structure, choice):
        pruned = predictions(model, data, setting.size)
    assert pruned.shape != dense.shape or not torch.allclose(pruned, dense)
    assert torch.equal(predictions(model, data), dense)
    assert dict(model.named_modules()) == modules
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(m._forward_hooks for m in model.modules())


def test_sub_network_equals_the_physically_pruned_model(detector):
    model, structure, space, ranking, data = detector
    choice = space.to_choice(reduced(space), ranking)
    imgs = data['inputs']['imgs']
    model.eval()
    try:
        with torch.no_grad():
            with subnetwork(model, structure, choice):
                shared = model.extract_feat(imgs)
            small = prune_copy(model, structure, choice).extract_feat(imgs)
    finally:
        model.train()
    torch.testing.assert_close(shared, small, rtol=1e-4, atol=1e-4)


def test_resize_scales_cameras_and_2d_ground_truth(detector):
    _, _, _, _, data = detector
    imgs, samples = data['inputs']['imgs'], data['data_samples']
    small_imgs, small = resize_batch(imgs, samples, (64, 192))
    assert small_imgs.shape[-2:] == (64, 192) and imgs.shape[-2:] == (96, 256)
    sx, sy = 192 / 256, 64 / 96
    point = np.array([8.0, 1.0, -1.0, 1.0])
    for old, new in zip(samples[0].lidar2img, small[0].lidar2img):
        p, q = old @ point, new @ point
        np.testing.assert_allclose(q[:2] / q[2], [p[0] / p[2] * sx, p[1] / p[2] * sy])
    np.testing.assert_allclose(small[0].gt_instances.bboxes.numpy(),
                               [[40 * sx, 30 * sy, 90 * sx, 70 * sy]], rtol=1e-6)
    assert samples[0].gt_instances.bboxes.tolist() == [[40.0, 30.0, 90.0, 70.0]]
    assert small[0].img_shape == [(64, 192)] * 6


# ---------------------------------------------------------------- end to end
def train_data_options(infos):
    return [f"train_dataloader.dataset.data_root={infos['root']}/",
            f"train_dataloader.dataset.ann_file={infos['train']}"]


def tool(*args):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='module')
def searched(nusc_infos, tmp_path_factory):
    """Search steps before iterations 0 and 1, the fix after iteration 1, one fine-tuning
    iteration. The |gamma| order spares the config's saliency iteration (the Taylor order is
    tested on its own below)."""
    work = str(tmp_path_factory.mktemp('jointprune'))
    tool('tools/train.py', CONFIG, '--work-dir', work, '--cfg-options',
         *train_data_options(nusc_infos),
         'train_dataloader.batch_size=1', 'train_cfg.max_iters=3', 'val_cfg=None',
         'val_dataloader=None', 'val_evaluator=None', 'default_hooks.checkpoint.interval=3',
         'custom_hooks.1.importance=bn_gamma', 'custom_hooks.1.search_begin=0',
         'custom_hooks.1.search_end=2', 'randomness.seed=0')
    return work


def test_search_writes_trajectory_solution_and_config(searched):
    with open(osp.join(searched, 'jointprune_trajectory.jsonl')) as f:
        steps = [json.loads(line) for line in f]
    assert [(s['step'], s['iter']) for s in steps] == [(1, 0), (2, 1)]
    for s in steps:
        assert np.isfinite(s['loss']) and s['latency'] <= s['budget']
        assert len(s['vector']) == len(s['names']) == 41
        assert s['outcome'] in ('success', 'failure', 'unchanged', 'flat', 'stationary')
    assert osp.getsize(osp.join(searched, 'jointprune_trajectory.png')) > 0
    with open(osp.join(searched, 'jointprune_solution.json')) as f:
        solution = json.load(f)
    assert solution['status'] == 'feasible'
    assert solution['latency'] <= solution['meta']['budget'] == pytest.approx(0.55)
    assert tuple(solution['img_size']) in [(96, 256), (80, 224), (64, 192)]
    final = load_config(osp.join(searched, 'jointprune_final_config.py'))
    assert tuple(final.img_size) == tuple(solution['img_size'])
    assert tuple(final.test_dataloader.dataset.pipeline[1].final_dim) == tuple(
        solution['img_size'])


def test_fixed_sub_network_stays_masked_and_exports(searched, tmp_path):
    path = osp.join(searched, 'iter_3.pth')
    final_config = osp.join(searched, 'jointprune_final_config.py')
    ckpt = torch.load(path, weights_only=False)
    fixed = ckpt['jointprune']['fixed']
    assert ckpt['pruning']['removed_blocks'] == fixed['removed_blocks']
    state = ckpt['state_dict']
    # Fine-tuned, and still the sub-network: removed blocks and pruned channels are zero.
    for block in fixed['removed_blocks']:
        assert state[f'{block}.conv1.weight'].abs().max() == 0
    for group, kept in fixed['channels'].items():
        if group.endswith('.residual'):
            gamma = state[f"{group[:-len('.residual')]}.0.downsample.1.weight"]
            dropped = torch.ones(len(gamma), dtype=torch.bool)
            dropped[kept] = False
            assert dropped.any() and gamma[dropped].abs().max() == 0
    # The hook of the final config resizes test batches of another size to the chosen one.
    cfg = load_config(final_config)
    cfg.work_dir = str(tmp_path / 'run')
    runner = Runner.from_cfg(cfg)
    runner.call_hook('before_run')
    runner.load_checkpoint(path)
    h, w = fixed['img_size']
    batch = fake_frame(96, 256)
    hook = next(h for h in runner.hooks if type(h).__name__ == 'JointPruningHook')
    hook.before_test_iter(runner, batch_idx=0, data_batch=batch)
    assert batch['inputs']['img'][0].shape[-2:] == (h, w)
    # The shared exporter makes a physically smaller model that computes the same features.
    pruned_config, weights = export_pruned(final_config, path, str(tmp_path / 'export'))
    pruned = MODELS.build(load_config(pruned_config).model)
    pruned.load_state_dict(torch.load(weights, weights_only=False)['state_dict'])
    masked = runner.model
    imgs = masked.data_preprocessor(batch, False)['inputs']['imgs']
    masked.eval()
    pruned.eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned.extract_feat(imgs), masked.extract_feat(imgs),
                                   rtol=1e-4, atol=1e-4)
    assert sum(p.numel() for p in pruned.img_backbone.parameters()) < sum(
        p.numel() for p in masked.img_backbone.parameters())
