"""`--resume` of a whole-detector pruning run (configs/streampetr_mdp45_whole_small_cpu.py),
before and after its one-shot event: from a checkpoint written before the event the event runs
again, the first decision's files kept; from one written after it the head's pruned structure comes
back from the checkpoint, the event does not run again and the pruned entries stay zero."""
import glob
import json
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch
from mmdet3d.registry import MODELS
from mmengine.registry import init_default_scope

from mmdp.config_utils import load_config
from mmdp.latency.config import build_from_config
from mmdp.pruning import CHECKPOINT_KEY, PruningMasks, PruningState
from mmdp.structure import derive_structure

from formula_tables import whole_formula_table

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/streampetr_mdp45_whole_small_cpu.py'
SHAPE = (6, 3, 64, 128)  # six views, small: a short CPU profile
HEAD = 'pts_bbox_head'


def train(work, infos, table, max_iters, resume=False):
    root = infos['root'] + '/'
    proc = subprocess.run([
        sys.executable, 'tools/train.py', CONFIG, '--work-dir', work,
        *(['--resume'] if resume else []), '--cfg-options',
        f'train_dataloader.dataset.data_root={root}',
        f'train_dataloader.dataset.ann_file={infos["train"]}',
        f'latency_input_shape={SHAPE}', f'custom_hooks.1.latency_table={table}',
        'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None', 'randomness.seed=0',
        f'train_cfg.max_iters={max_iters}', 'default_hooks.checkpoint.interval=2'],
        capture_output=True, text=True, cwd=ROOT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return log


def solutions(work) -> list:
    found = []
    for path in sorted(glob.glob(osp.join(work, 'pruning', 'event1_*_solution.json'))):
        with open(path) as f:
            data = json.load(f)
        found.append((data['widths'], sorted(data['removed_blocks'])))
    return found


def state_of(path) -> tuple:
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    return ckpt, PruningState.from_dict(ckpt[CHECKPOINT_KEY])


@pytest.fixture(scope='module')
def first_run(nusc_infos, tmp_path_factory):
    """Saliency over iterations 0-2, the event before iteration 3, checkpoints at 2 and 4."""
    tmp = tmp_path_factory.mktemp('resume_whole')
    table = str(tmp / 'table.json')
    # Known costs, not timings, so that the event's choice does not depend on the machine's
    # load: the head's units cost most and the token setting alone cannot meet the budget, so
    # the event prunes head units (a table timed under load once made it prune none).
    model, _ = build_from_config(CONFIG, SHAPE)
    whole_formula_table(model, SHAPE, 128, 0.01, 0.1, HEAD, per_query=False).save(table)
    work = str(tmp / 'work')
    train(work, nusc_infos, table, 4)
    return dict(tmp=tmp, table=table, work=work, infos=nusc_infos)


def test_resume_before_the_event_runs_it_again_and_keeps_the_first_decision(first_run):
    work = str(first_run['tmp'] / 'before')
    shutil.copytree(first_run['work'], work, ignore=shutil.ignore_patterns('iter_4.pth'))
    with open(osp.join(work, 'last_checkpoint'), 'w') as f:
        f.write(osp.join(work, 'iter_2.pth'))
    log = train(work, first_run['infos'], first_run['table'], 4, resume=True)
    assert f'--resume: resuming from {osp.join(work, "iter_2.pth")}' in log
    assert 'pruning event 1/1 at iteration 3' in log
    # The window's last iteration runs again on a fresh temporal memory, so the decision may
    # differ; the first one stays on disk (aside when it does) and the run goes on with the new.
    first, = solutions(first_run['work'])
    assert first in solutions(work)
    with open(osp.join(work, 'pruning', 'event1_iter3_solution.json')) as f:
        newest = json.load(f)
    _, state = state_of(osp.join(work, 'iter_4.pth'))
    assert state.removed_blocks == sorted(newest['removed_blocks'])
    assert {g: w for g, w in state.widths.items() if g in newest['widths']} == newest['widths']
    assert any(g.startswith(HEAD) for g in state.widths)


def test_resume_after_the_event_keeps_the_pruned_head(first_run):
    work = first_run['work']
    _, before = state_of(osp.join(work, 'iter_4.pth'))
    log = train(work, first_run['infos'], first_run['table'], 5, resume=True)
    assert f'--resume: resuming from {osp.join(work, "iter_4.pth")}' in log
    assert 'pruning state restored: 1 of 1 pruning events done' in log
    assert 'pruning event 1/1' not in log
    ckpt, after = state_of(osp.join(work, 'iter_5.pth'))
    assert after == before
    cfg = load_config(CONFIG)
    init_default_scope('mmdet3d')
    structure = derive_structure(MODELS.build(cfg.model), SHAPE, head=HEAD)
    masks = PruningMasks(structure, after.choice())
    head = [name for name in masks.masks if name.startswith(HEAD)]
    assert head
    for name, keep in masks.masks.items():  # a fine-tuning iteration after the resume
        param = ckpt['state_dict'][name]
        assert not param[~keep.expand_as(param)].any(), name
