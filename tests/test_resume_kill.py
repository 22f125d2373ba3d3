"""A pruning run (tools/train.py, the small MDP config, load_from a dense checkpoint) is killed
with SIGKILL three times and resumed with `--resume` each time:

A. after iteration 1, before its first checkpoint: the resume starts from load_from (the same
   first losses as the killed run), not from random weights;
B. while writing iter_4.pth (after the pruning event at iteration 3): iter_2.pth stays the latest
   complete checkpoint, nothing named iter_4.pth is left half-written, the resume takes iter_2;
C. after iteration 4 (iter_4.pth written, after the event): the resume keeps the pruned
   structure, writes no new event files and ends with iter_5.pth.
The rerun of the event in B's resume keeps the first decision's files (aside when it differs).

Run as a script, this file is the killed process: `python tests/test_resume_kill.py iter|save N
-- TRAIN ARGS` runs tools/train.py and SIGKILLs itself after iteration N, or half-way through
writing iter_N.pth.
"""
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/streampetr_mdp45_small_cpu.py'
TABLE_SHAPE = (1, 3, 64, 128)
STEP = 128


def _kill_self():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _killed_main(mode: str, at: int, train_args: list) -> None:
    """tools/train.py with a fault: SIGKILL after iteration `at`, or in the middle of writing
    iter_`at`.pth (through the same atomic writer every checkpoint goes through)."""
    sys.path.insert(0, ROOT)
    import importlib.util

    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    import mmdp.checkpoint_compat as compat

    if mode == 'iter':
        class KillAfter(Hook):
            priority = 'LOWEST'  # after the checkpoint hook of the same iteration

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                if runner.iter + 1 == at:
                    _kill_self()

        register = Runner.register_custom_hooks

        def register_with_kill(self, hooks):
            register(self, hooks)
            self.register_hook(KillAfter())
        Runner.register_custom_hooks = register_with_kill
    else:
        write = compat._write_bytes

        def write_half_then_die(path, data):
            if f'iter_{at}.pth' in osp.basename(path):
                with open(path, 'wb') as f:
                    f.write(data[:len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                _kill_self()
            write(path, data)
        compat._write_bytes = write_half_then_die

    spec = importlib.util.spec_from_file_location('train', osp.join(ROOT, 'tools', 'train.py'))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    sys.exit(train.main(train_args))


# ---------------------------------------------------------------------- the test
TABLE_DEVICE = 'formula'  # a made-up device: the hooks are told it with latency_device


def small_model():
    from mmdet3d.registry import MODELS
    from mmengine.registry import init_default_scope

    from mmdp.config_utils import load_config

    init_default_scope('mmdet3d')
    torch.manual_seed(0)
    return MODELS.build(load_config(CONFIG).model)


def formula_table(model, path: str) -> str:
    """A latency table of the small backbone (formula costs: what is tested here does not
    depend on the numbers)."""
    from formula_tables import formula_table as make
    make(model, TABLE_SHAPE, STEP, path, TABLE_DEVICE)
    return path


@pytest.fixture(scope='module')
def setup(nusc_infos, tmp_path_factory):
    """A latency table of the small backbone and a dense checkpoint."""
    folder = tmp_path_factory.mktemp('kill')
    model = small_model()
    dense = str(folder / 'dense.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, dense)
    return dict(table=formula_table(model, str(folder / 'table.json')), dense=dense,
                infos=nusc_infos, work=str(folder / 'work'))


def run(setup, kill=None):
    """tools/train.py --resume on the same work dir, killed as `kill` = (mode, N) says."""
    root = setup['infos']['root'] + '/'
    args = ['--resume', '--work-dir', setup['work'], '--cfg-options',
            f'train_dataloader.dataset.data_root={root}',
            f'train_dataloader.dataset.ann_file={setup["infos"]["train"]}',
            f'latency_input_shape={TABLE_SHAPE}', f'custom_hooks.1.latency_table={setup["table"]}',
            f'custom_hooks.1.latency_device={TABLE_DEVICE}',
            f'load_from={setup["dense"]}', 'train_cfg.max_iters=5',
            'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
            'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None', 'randomness.seed=0']
    if kill:
        command = [sys.executable, __file__, kill[0], str(kill[1]), '--', CONFIG, *args]
    else:
        command = [sys.executable, 'tools/train.py', CONFIG, *args]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    return proc, time.perf_counter() - start


def losses(log: str) -> dict:
    """{iteration: loss} from the logger's lines."""
    found = {}
    for line in log.splitlines():
        if 'Iter(train) [' in line and ' loss: ' in line:
            it = int(line.split('Iter(train) [')[1].split('/')[0])
            found[it] = float(line.split(' loss: ')[1].split()[0])
    return found


def decisions(work) -> list:
    """(file, widths, removed blocks) of every solution file of the event."""
    found = []
    for path in sorted(glob.glob(osp.join(work, 'pruning', 'event1_iter3*_solution.json'))):
        with open(path) as f:
            data = json.load(f)
        found.append((osp.basename(path), data['widths'], sorted(data['removed_blocks'])))
    return found


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.fixture(scope='module')
def stages(setup):
    """Each kill and resume in turn, with its output and wall time."""
    work, out = setup['work'], {}
    out['a'] = run(setup, kill=('iter', 1))
    out['a_files'] = sorted(os.listdir(work))
    out['b'] = run(setup, kill=('save', 4))
    out['b_files'] = sorted(os.listdir(work))
    out['b_decisions'] = decisions(work)
    out['c'] = run(setup, kill=('iter', 4))
    out['c_decisions'] = decisions(work)
    out['c_files'] = sorted(os.listdir(work))
    out['c_state'] = load(osp.join(work, 'iter_4.pth'))['pruning']
    out['d'] = run(setup)
    return out


def log_of(stage):
    proc, _ = stage
    return proc.stdout + proc.stderr


def test_kill_before_the_first_checkpoint_resumes_from_load_from(stages, setup):
    proc, _ = stages['a']
    assert proc.returncode == -signal.SIGKILL, log_of(stages['a'])[-3000:]
    assert not [f for f in stages['a_files'] if f.endswith('.pth') or f == 'last_checkpoint']
    log = log_of(stages['b'])
    assert (f'--resume: no checkpoint in {setup["work"]} to resume from; starting from '
            f'load_from {setup["dense"]}') in log
    assert 'Auto resumed from the latest checkpoint None' not in log
    first, again = losses(log_of(stages['a'])), losses(log)
    assert set(first) == {1}
    assert again[1] == pytest.approx(first[1], rel=1e-4)  # the same weights and data


def test_kill_during_a_save_leaves_the_last_complete_checkpoint(stages, setup):
    proc, _ = stages['b']
    assert proc.returncode == -signal.SIGKILL, log_of(stages['b'])[-3000:]
    files = stages['b_files']
    assert 'iter_2.pth' in files and 'iter_4.pth' not in files
    assert [f for f in files if f.startswith('.iter_4.pth')]  # the half-written temporary
    assert not [f for f in stages['c_files'] if f.startswith('.iter_4.pth')]  # cleaned up
    assert 'pruning event 1/1 at iteration 3' in log_of(stages['b'])
    log = log_of(stages['c'])
    assert f'--resume: resuming from {osp.join(setup["work"], "iter_2.pth")}' in log
    assert 'pruning event 1/1 at iteration 3' in log  # the event runs again after iter_2
    # The first decision is still on disk, under its name or kept aside.
    first = stages['b_decisions'][0][1:]
    assert first in [d[1:] for d in stages['c_decisions']]


def test_kill_after_the_event_resumes_with_the_pruned_structure(stages, setup):
    proc, _ = stages['c']
    assert proc.returncode == -signal.SIGKILL, log_of(stages['c'])[-3000:]
    proc, _ = stages['d']
    assert proc.returncode == 0, log_of(stages['d'])[-3000:]
    log = log_of(stages['d'])
    assert f'--resume: resuming from {osp.join(setup["work"], "iter_4.pth")}' in log
    assert 'pruning state restored: 1 of 1 pruning events done' in log
    assert 'pruning event 1/1' not in log
    assert decisions(setup['work']) == stages['c_decisions']
    assert load(osp.join(setup['work'], 'iter_5.pth'))['pruning'] == stages['c_state']
    for stage in 'abcd':
        print(f'stage {stage}: {stages[stage][1]:.1f} s')


if __name__ == '__main__':
    mode, at = sys.argv[1], int(sys.argv[2])
    _killed_main(mode, at, sys.argv[sys.argv.index('--') + 1:])
