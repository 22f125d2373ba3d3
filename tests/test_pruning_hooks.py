"""Pruning inside training with the MMEngine hooks.

StreamPETR (small CPU config, tools/train.py): saliency, one MDP event at the configured
iteration, fine-tuning; the structure matches the solution file; pruned entries and their AdamW
state stay zero; resuming after the event keeps the structure, before it still prunes on time.
A small ResNet detector under a real Runner: HALP's iterative schedule on two DDP ranks (gloo)
ends with the same masks and saliency on both; set-up errors stop a run before it trains.
"""
import glob
import json
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from mmdet.models.backbones import ResNet
from mmdet.models.necks import FPN
from mmdet3d.registry import MODELS
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from torch import nn

from mmdp.config_utils import load_config
from mmdp.export import export_pruned
from mmdp.hooks import PruningHook, SaliencyHook
from mmdp.latency import TableMismatchError
from mmdp.pruning import CHECKPOINT_KEY, PruningMasks, PruningState
from mmdp.solvers import Solution
from mmdp.structure import derive_structure

from formula_tables import formula_table
from tool_loader import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/streampetr_mdp45_small_cpu.py'
TABLE_SHAPE = (1, 3, 64, 128)  # a small backbone input keeps the CPU profile short
STEP = 128


# ---------------------------------------------------------------------- StreamPETR, tools/train.py
@pytest.fixture(scope='module')
def table(tmp_path_factory):
    """A latency table of the small config's backbone profiled on this CPU."""
    path = str(tmp_path_factory.mktemp('latency') / 'small.json')
    load_tool('profile_latency').main([
        'configs/streampetr_r50_small_cpu.py', '--out', path, '--step', str(STEP),
        '--repeats', '1', '--warmup', '1', '--samples', '3',
        '--input-shape', *map(str, TABLE_SHAPE)])
    return path


def train(work_dir, infos, table, *options, config=CONFIG):
    root = infos['root'] + '/'
    args = [sys.executable, 'tools/train.py', config, '--work-dir', work_dir, '--cfg-options',
            f'train_dataloader.dataset.data_root={root}',
            f'train_dataloader.dataset.ann_file={infos["train"]}',
            f'latency_input_shape={TABLE_SHAPE}', f'custom_hooks.1.latency_table={table}',
            'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None', 'randomness.seed=0',
            *options]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def run(nusc_infos, table, tmp_path_factory):
    """Saliency over iterations 0-2, the event before iteration 3, fine-tuning iteration 3
    (and 4 in the resumed run); checkpoints after 2 (before the event) and 4 iterations."""
    work = str(tmp_path_factory.mktemp('mdp'))
    log = train(work, nusc_infos, table, 'train_cfg.max_iters=4',
                'default_hooks.checkpoint.interval=2')
    return dict(work=work, log=log, infos=nusc_infos, table=table)


def event_files(work_dir) -> list:
    return sorted(osp.basename(p) for p in glob.glob(osp.join(work_dir, 'pruning', '*.json')))


def load_ckpt(path):
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.fixture(scope='module')
def small_model():
    cfg = load_config(CONFIG)
    init_default_scope('mmdet3d')
    model = MODELS.build(cfg.model)
    return model, cfg, derive_structure(model, TABLE_SHAPE)


def test_training_prunes_once_at_the_configured_iteration(run):
    assert event_files(run['work']) == ['event1_iter3_problem.json', 'event1_iter3_saliency.json',
                                        'event1_iter3_solution.json', 'event1_iter3_summary.json']
    assert 'pruning event 1/1 at iteration 3' in run['log']
    with open(osp.join(run['work'], 'pruning', 'event1_iter3_summary.json')) as f:
        summary = json.load(f)
    assert summary['saliency_contributions'] == 3
    assert summary['status'] == 'optimal' and 0 <= summary['gap'] <= 1e-6  # mip_rel_gap
    assert summary['predicted_ms']['after'] < summary['predicted_ms']['before']
    assert summary['problem_latency_ms'] <= summary['budget_ms'] * (1 + 1e-9)
    before = load_ckpt(osp.join(run['work'], 'iter_2.pth'))
    assert PruningState.from_dict(before[CHECKPOINT_KEY]).events_done == 0
    assert before['saliency']['count'] == 2


def assert_pruned_entries_are_zero(ckpt, small_model):
    """Pruned weights and their AdamW moments are exactly zero, after fine-tuning steps."""
    model, cfg, structure = small_model
    model.load_state_dict(ckpt['state_dict'])
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    wrapper.load_state_dict(ckpt['optimizer'])
    masks = PruningMasks(structure, PruningState.from_dict(ckpt[CHECKPOINT_KEY]).choice())
    assert masks.masks
    moments = 0
    for name, mask in masks.masks.items():
        param = model.get_parameter(name)
        mask = mask.expand_as(param)
        assert not param[~mask].any(), name
        for value in wrapper.optimizer.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                assert not value[~mask].any(), name
                moments += bool(value[mask].any())
    assert moments > 0  # the kept entries do have optimizer state


def test_structure_matches_the_solution_and_masks_hold(run, small_model):
    structure = small_model[2]
    solution = Solution.load(osp.join(run['work'], 'pruning', 'event1_iter3_solution.json'))
    ckpt = load_ckpt(osp.join(run['work'], 'iter_4.pth'))
    state = PruningState.from_dict(ckpt[CHECKPOINT_KEY])
    assert state.widths == solution.widths
    assert sorted(state.removed_blocks) == sorted(solution.removed_blocks)
    weights = ckpt['state_dict']
    for layer in structure.layers:
        alive = int((weights[f'{layer.name}.weight'].flatten(1).abs().sum(1) > 0).sum())
        removed = layer.block in solution.removed_blocks
        assert alive == (0 if removed else solution.widths[layer.group]), layer.name
    assert_pruned_entries_are_zero(ckpt, small_model)
    config, _ = export_pruned(CONFIG, osp.join(run['work'], 'iter_4.pth'),
                              osp.join(run['work'], 'export'))
    exported = load_config(config).model.img_backbone
    assert {f'img_backbone.{g}': w for g, w in exported.widths.items()} == {
        g: w for g, w in solution.widths.items() if w != structure.groups[g]}


def test_resume_after_the_event_keeps_the_structure(run, small_model, tmp_path):
    work = str(tmp_path)
    train(work, run['infos'], run['table'], 'train_cfg.max_iters=5',
          'default_hooks.checkpoint.interval=5', '--resume', osp.join(run['work'], 'iter_4.pth'))
    assert event_files(work) == []
    before = load_ckpt(osp.join(run['work'], 'iter_4.pth'))
    after = load_ckpt(osp.join(work, 'iter_5.pth'))
    assert after['meta']['iter'] == 5
    assert after[CHECKPOINT_KEY] == before[CHECKPOINT_KEY]
    assert_pruned_entries_are_zero(after, small_model)
    stem = 'img_backbone.conv1.weight'
    assert not torch.equal(after['state_dict'][stem], before['state_dict'][stem])


def test_resume_before_the_event_still_prunes_on_time(run, tmp_path):
    work = str(tmp_path)
    log = train(work, run['infos'], run['table'], 'train_cfg.max_iters=4',
                'default_hooks.checkpoint.interval=4', '--resume',
                osp.join(run['work'], 'iter_2.pth'))
    assert 'pruning event 1/1 at iteration 3' in log
    with open(osp.join(work, 'pruning', 'event1_iter3_summary.json')) as f:
        assert json.load(f)['saliency_contributions'] == 3  # 2 restored + 1 collected
    assert PruningState.from_dict(
        load_ckpt(osp.join(work, 'iter_4.pth'))[CHECKPOINT_KEY]).events_done == 1


# ---------------------------------------------------------------------- a small detector, a Runner
TOY_SHAPE = (2, 3, 32, 32)


class ToyDetector(BaseModel):
    """A ResNet-18 (16 base channels, frozen BN as in StreamPETR), an FPN and a regression
    head: enough for the hooks, small enough for two CPU ranks."""

    def __init__(self):
        super().__init__()
        self.img_backbone = ResNet(depth=18, base_channels=16, out_indices=(2, 3),
                                   norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True)
        self.img_neck = FPN(in_channels=[64, 128], out_channels=16, num_outs=2)
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, inputs, target=None, mode='tensor'):
        feats = self.img_neck(self.img_backbone(torch.stack(inputs)))
        pred = sum(self.head(f).mean((1, 2, 3)) for f in feats)
        if mode == 'loss':
            return {'loss': (pred - torch.stack(target)).pow(2).mean()}
        return pred


def toy_data(n=16):
    gen = torch.Generator().manual_seed(0)
    return [dict(inputs=torch.randn(3, 32, 32, generator=gen),
                 target=torch.randn(1, generator=gen)[0]) for _ in range(n)]


def toy_table(path) -> str:
    return formula_table(ToyDetector(), TOY_SHAPE, 8, path).meta['device']


class SaliencyProbe(Hook):
    """Records the saliency totals the pruning hook is about to read at each event."""
    priority = 'ABOVE_NORMAL'

    def __init__(self, events):
        self.events, self.seen = events, []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter in self.events:
            collector = next(h for h in runner.hooks if isinstance(h, SaliencyHook)).collector
            self.seen.append((collector.sums.clone(), collector.count))


HALP_EVENTS = [2, 4]


def toy_runner(work_dir, table, device, distributed=False, **pruning):
    hooks = [dict(type='SaliencyHook', begin=0, end=4),
             dict(type='PruningHook', latency_table=table, latency_device=device,
                  latency_model=dict(type='lut_linear', fitted=False),
                  solver=dict(type='halp'), prune_ratio=0.5, chunk=8, at_iter=2, steps=2,
                  interval=2)]
    hooks[1].update(pruning)
    return Runner(
        model=ToyDetector(), work_dir=work_dir, default_scope='mmdet3d',
        train_dataloader=dict(dataset=toy_data(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=True),
                              collate_fn=dict(type='pseudo_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=6), custom_hooks=hooks,
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=6)),
        # A CPU module takes no device_ids (mmengine passes the local rank by default).
        cfg=dict(latency_input_shape=TOY_SHAPE,
                 model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None)),
        randomness=dict(seed=0), launcher='pytorch' if distributed else 'none',
        env_cfg=dict(dist_cfg=dict(backend='gloo')))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _train_on_rank(rank, world, port, work_dir, table, device):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # mmengine's own set-up calls torch.cuda.set_device, which a CPU build lacks.
    torch_dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        runner = toy_runner(work_dir, table, device, distributed=True)
        probe = SaliencyProbe(HALP_EVENTS)
        runner.register_hook(probe)
        runner.train()
        hook = next(h for h in runner.hooks if isinstance(h, PruningHook))
        model = runner.model.module
        masks = PruningMasks(hook.structure, hook.state.choice())
        optimizer = runner.optim_wrapper.optimizer
        dirty = []
        for name, mask in masks.masks.items():
            param = model.get_parameter(name)
            state = optimizer.state.get(param, {}).values()
            for value in [param] + [v for v in state if torch.is_tensor(v)
                                    and v.shape == param.shape]:
                if value[~mask.expand_as(param)].any():
                    dirty.append(name)
        torch.save({'state': hook.state.to_dict(), 'seen': probe.seen, 'dirty': dirty,
                    'weights': {k: v.clone() for k, v in model.state_dict().items()}},
                   osp.join(work_dir, f'rank{rank}.pt'))
    finally:
        torch_dist.destroy_process_group()


def test_halp_on_two_ddp_ranks_ends_with_the_same_masks(tmp_path):
    device = toy_table(str(tmp_path / 'toy.json'))
    mp.spawn(_train_on_rank, args=(2, _free_port(), str(tmp_path), str(tmp_path / 'toy.json'),
                                   device), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(2)]
    assert ranks[0]['state'] == ranks[1]['state']
    state = PruningState.from_dict(ranks[0]['state'])
    assert state.events_done == 2 and state.removed_blocks == []
    widths = [event['groups'] for event in state.history]
    # The schedule narrows in two steps, never widening a group.
    assert any(g['after'] < g['before'] for g in widths[0].values())
    assert any(g['after'] < g['before'] for g in widths[1].values())
    assert all(widths[1][n]['before'] == widths[0][n]['after'] for n in widths[0])
    assert state.history[1]['budget_ms'] < state.history[0]['budget_ms']
    for (sums0, count0), (sums1, count1) in zip(ranks[0]['seen'], ranks[1]['seen']):
        assert torch.equal(sums0, sums1) and count0 == count1 == 2  # 2 iterations, ranks averaged
    assert len(ranks[0]['seen']) == 2
    assert ranks[0]['dirty'] == ranks[1]['dirty'] == []
    for name, value in ranks[0]['weights'].items():
        assert torch.equal(value, ranks[1]['weights'][name]), name
    assert sorted(os.listdir(tmp_path / 'pruning')) == [
        f'event{e}_iter{i}_{kind}.json' for e, i in ((1, 2), (2, 4))
        for kind in ('problem', 'saliency', 'solution', 'summary')]


def test_set_up_errors_stop_a_run_before_it_trains_and_infeasible_budgets_fail(tmp_path):
    table = str(tmp_path / 'toy.json')
    device = toy_table(table)
    runner = toy_runner(str(tmp_path / 'a'), str(tmp_path / 'missing.json'), device)
    with pytest.raises(FileNotFoundError, match=r'missing\.json does not exist; make a table on '
                                                r'the target device with `python '
                                                r'tools/profile_latency.py .* --input-shape 2 3 '
                                                r'32 32 --step 8 --dtype fp32 --runtime torch`'):
        runner.train()
    assert runner.iter == 0
    runner = toy_runner(str(tmp_path / 'b'), table, 'another GPU')
    with pytest.raises(TableMismatchError, match="device is .* but 'another GPU' here.*"
                                                 'profile_latency'):
        runner.train()
    runner = toy_runner(str(tmp_path / 'c'), table, device, chunk=4)
    with pytest.raises(ValueError, match='chunk=4 is finer than the 8-channel step'):
        runner.train()
    runner = toy_runner(str(tmp_path / 'd'), table, device, prune_ratio=0.999)
    with pytest.raises(ValueError, match=r'prune_ratio=0\.999 asks for .* ms, but the smallest '
                                         r'latency any structure reaches is .* set prune_ratio '
                                         r'<= 0\.[0-9]+'):
        runner.train()  # before the saliency window, from the table and the structure
    assert runner.iter == 0


def test_hook_settings_are_checked():
    with pytest.raises(ValueError, match="steps=3 needs a solver .* 'mdp' prunes once"):
        PruningHook('t.json', 0.5, at_iter=2, steps=3, interval=2, solver='mdp')
    with pytest.raises(ValueError, match="solver type 'knapsack' is not registered"):
        PruningHook('t.json', 0.5, at_iter=2, solver='knapsack')
    with pytest.raises(ValueError, match='prune_ratio must lie in'):
        PruningHook('t.json', 1.5, at_iter=2)
    with pytest.raises(ValueError, match='window'):
        SaliencyHook(end=0)


def test_an_event_run_again_keeps_an_earlier_different_decision(tmp_path):
    """A resumed run that reaches an event again: the same decision overwrites the files, a
    different one moves the earlier files aside, numbered, never over each other."""
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    runner = SimpleNamespace(logger=MMLogger.get_current_instance())
    stem = str(tmp_path / 'event1_iter3')

    def write(widths):
        solution = Solution('optimal', 1.0, 2.0, widths, [], 0.0)
        PruningHook._keep_aside_if_different(runner, stem, solution)
        solution.save(f'{stem}_solution.json')
        for kind in ('problem', 'summary'):
            (tmp_path / f'event1_iter3_{kind}.json').write_text(json.dumps(widths))

    write({'g': 8})
    write({'g': 8})
    assert sorted(os.listdir(tmp_path)) == [f'event1_iter3_{k}.json'
                                            for k in ('problem', 'solution', 'summary')]
    write({'g': 4})
    write({'g': 2})
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f'event1_iter3_{k}.json' for k in ('problem', 'solution', 'summary')]
        + [f'event1_iter3_superseded{n}_{k}.json' for n in (1, 2)
           for k in ('problem', 'solution', 'summary')])
    assert Solution.load(f'{stem}_superseded1_solution.json').widths == {'g': 8}
    assert Solution.load(f'{stem}_superseded2_solution.json').widths == {'g': 4}
    assert Solution.load(f'{stem}_solution.json').widths == {'g': 2}
