"""Every bad input and fault tried on the tools, with the exit code and the message each must
give. CASES is the table of docs/reliability.md: `python tests/test_reliability.py --write-doc`
writes that page from it, and a test checks the page is current.

Most cases call a tool's main(argv) in this process, through the same `mmdp.cli.run` that its
`python tools/x.py` entry uses (exit code, one message on stderr); two run a tool as a user
does, in a subprocess, to check the entry itself (no traceback, the exit status).
"""
import contextlib
import os
import os.path as osp
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass

import pytest

from tool_loader import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOC = osp.join(ROOT, 'docs', 'reliability.md')
SMALL = 'configs/streampetr_r50_small_cpu.py'
MDP = 'configs/streampetr_mdp45_small_cpu.py'
STEP = 128
HOOK_SHAPE = (1, 3, 64, 128)
FORMULA_DEVICE = 'formula'


@dataclass(frozen=True)
class Case:
    id: str
    what: str  # the fault, as the doc names it
    tool: str  # tools/<tool>.py
    args: tuple  # '{name}' is filled from the fixtures' paths; '@data' / '@hook' expand
    code: int  # exit status
    message: str  # must appear in stderr (filled like args)
    subprocess: bool = False  # run as `python tools/<tool>.py`, not main(argv) here
    cpu_only: bool = False  # only meaningful where CUDA is absent

    @property
    def command(self) -> str:
        return ' '.join([f'tools/{self.tool}.py', *self.args])


CASES = [
    # ------------------------------------------------------------------ configs and overrides
    Case('override-type', 'a number set to text', 'train',
         (SMALL, '--cfg-options', 'train_cfg.max_iters=abc'), 2,
         "--cfg-options train_cfg.max_iters='abc': train_cfg.max_iters must be an integer (the "
         'config has 250)'),
    Case('override-type-cli', 'the same, as a user runs it (no traceback)', 'train',
         (SMALL, '--cfg-options', 'train_cfg.max_iters=abc'), 2,
         'train_cfg.max_iters must be an integer', subprocess=True),
    Case('override-interpolated', 'a top-level variable already copied into other keys',
         'train', (SMALL, '--cfg-options', 'data_root=/elsewhere/'), 2,
         "--cfg-options key 'data_root': the config copied its value 'data/synthetic_nuscenes/' "
         'into other keys when it was read, so setting it changes nothing; set those instead: '
         'train_dataloader.dataset.data_root, val_dataloader.dataset.data_root'),
    Case('override-interpolated-int', 'the same for max_iters', 'train',
         (SMALL, '--cfg-options', 'max_iters=5'), 2,
         "set those instead: param_scheduler.1.end, train_cfg.max_iters, train_cfg.val_interval, "
         'default_hooks.checkpoint.interval'),
    Case('override-unread', 'a top-level variable nothing reads', 'train',
         (MDP, '--cfg-options', 'max_iters=5'), 2,
         "--cfg-options key 'max_iters': a variable of the config file that nothing reads"),
    Case('override-typo', 'a key that does not exist', 'train',
         (SMALL, '--cfg-options', 'default_hooks.loger.interval=1'), 2,
         "'default_hooks.loger.interval' does not exist in the config: 'loger' is not a key of "
         'default_hooks'),
    Case('config-missing', 'a config file that does not exist', 'train',
         ('configs/nope.py',), 2, 'config file configs/nope.py does not exist'),
    Case('launcher-no-cuda', '--launcher slurm without CUDA', 'train',
         (SMALL, '@data', '--launcher', 'slurm'), 2,
         '--launcher slurm without CUDA: only --launcher pytorch', cpu_only=True),
    # ------------------------------------------------------------------ checkpoints and data
    Case('resume-missing', '--resume of a file that does not exist', 'train',
         (SMALL, '@data', '--resume', '{tmp}/missing.pth'), 2,
         '--resume {tmp}/missing.pth: no such checkpoint'),
    Case('load-from-missing', 'load_from a file that does not exist', 'train',
         (SMALL, '@data', '--cfg-options', 'load_from={tmp}/missing.pth'), 2,
         'load_from {tmp}/missing.pth: no such checkpoint'),
    Case('info-truncated', 'a truncated info pickle', 'train',
         (SMALL, '--cfg-options', 'train_dataloader.dataset.ann_file={truncated_pkl}'), 2,
         'train_dataloader.dataset.ann_file: {truncated_pkl} is truncated or not a pickle; make '
         'it again with tools/create_data.py'),
    Case('train-load-pruned', 'load_from an exported pruned model under the dense config',
         'train', (SMALL, '@data', '--cfg-options', 'load_from={pruned_pth}'), 2,
         'checkpoint {pruned_pth} does not fit the model of ' + SMALL + ':\n  34 size mismatch: '
         'img_backbone.layer1.0.conv3.weight (128, 64, 1, 1) in the checkpoint, (256, 64, 1, 1) '
         'in the model;'),
    Case('test-missing', 'tools/test.py of a checkpoint that does not exist', 'test',
         (SMALL, '{tmp}/missing.pth'), 2, 'checkpoint {tmp}/missing.pth does not exist'),
    Case('test-load-pruned', 'tools/test.py of an exported pruned model under the dense config',
         'test', (SMALL, '{pruned_pth}', '@testdata'), 2,
         'it is an exported pruned model: use its own config {export}/pruned.py\n  pass '
         '--allow-partial-load to load the matching part on purpose (e.g. an ImageNet backbone)'),
    Case('benchmark-load-pruned', 'tools/benchmark.py of a pruned model under the dense config',
         'benchmark', (SMALL, '{pruned_pth}', '--fake-data'), 2,
         'it is an exported pruned model: use its own config {export}/pruned.py'),
    Case('speedup-not-a-checkpoint', 'tools/speedup.py of a file that is not a checkpoint',
         'speedup', (SMALL, '{bad_json}', '--against', SMALL, 'none', '--out', '{tmp}/s.json'),
         2, 'checkpoint {bad_json} cannot be read'),
    Case('deploy-not-a-checkpoint', 'tools/deploy.py of a file that is not a checkpoint',
         'deploy', (SMALL, '{bad_json}', '--out', '{tmp}/deploy'), 2,
         'checkpoint {bad_json} cannot be read'),
    # ------------------------------------------------------------------ pruning set-up
    Case('prune-ratio-infeasible', 'a prune_ratio no structure reaches', 'train',
         (MDP, '@data', '@hook', 'custom_hooks.1.prune_ratio=0.99'), 2,
         'PruningHook: prune_ratio=0.99 asks for 6.67818 ms, but the smallest latency any '
         'structure reaches is 26.2644 ms (BilinearLutLatency over {table}, 128-channel steps): '
         'set prune_ratio <= 0.9607'),
    Case('table-dtype', 'a latency table of another dtype', 'train',
         (MDP, '@data', '@hook', 'custom_hooks.1.latency_dtype=fp16'), 2,
         "latency table {table}: dtype is 'fp32' in the table but 'fp16' here; make a table on "
         'the target device with `python tools/profile_latency.py ' + MDP + ' --out '
         '{tmp}/table_formula_fp16_torch_1x3x64x128_step128.json --input-shape 1 3 64 128 --step '
         '128 --dtype fp16 --runtime torch`, then set custom_hooks.1.latency_table='
         '{tmp}/table_formula_fp16_torch_1x3x64x128_step128.json'),
    Case('table-grid', 'a latency table whose widths do not follow its step', 'train',
         (MDP, '@data', '--cfg-options', 'latency_input_shape=(1, 3, 64, 128)',
          'custom_hooks.1.latency_table={bad_grid_table}',
          f'custom_hooks.1.latency_device={FORMULA_DEVICE}'), 2,
         "not the grid of its 128-channel step"),
    Case('table-truncated', 'a truncated latency table JSON', 'train',
         (MDP, '@data', '--cfg-options', 'custom_hooks.1.latency_table={bad_json}'), 2,
         'latency table {bad_json}: not valid JSON'),
    # ------------------------------------------------------------------ counts and devices
    Case('benchmark-samples-0', 'benchmark.py --samples 0', 'benchmark',
         (SMALL, '--samples', '0'), 2, 'argument --samples: 0 is below the minimum 1'),
    Case('benchmark-warmup-negative', 'benchmark.py --warmup -1', 'benchmark',
         (SMALL, '--warmup', '-1'), 2, 'argument --warmup: -1 is below the minimum 0'),
    Case('benchmark-cuda', 'benchmark.py --device cuda without CUDA', 'benchmark',
         (SMALL, '--device', 'cuda'), 2, '--device cuda: CUDA is not available here',
         cpu_only=True),
    Case('benchmark-table-dtype', 'benchmark.py --amp with an fp32 latency table (before any '
         'frame is timed)', 'benchmark',
         (SMALL, '--fake-data', '--amp', '--latency-table', '{cpu_table}'), 2,
         "dtype is 'fp32' in the table but 'fp16' here"),
    Case('profile-cuda', 'profile_latency.py --device cuda without CUDA', 'profile_latency',
         (SMALL, '--out', '{tmp}/t.json', '--device', 'cuda'), 2,
         '--device cuda: CUDA is not available here', cpu_only=True),
    Case('profile-step-0', 'profile_latency.py --step 0', 'profile_latency',
         (SMALL, '--out', '{tmp}/t.json', '--step', '0'), 2,
         'argument --step: 0 is below the minimum 1'),
    Case('validate-n-1', 'validate_latency.py -n 1', 'validate_latency',
         (SMALL, '--table', '{cpu_table}', '-n', '1'), 2, 'argument -n: 1 is below the minimum 2'),
    Case('solve-truncated', 'solve.py of a truncated problem JSON', 'solve',
         ('{bad_json}', '--out', '{tmp}/solution.json'), 2, '{bad_json}: not valid JSON'),
    Case('solve-negative', 'solve.py of a problem with a negative importance', 'solve',
         ('{negative_problem}', '--out', '{tmp}/solution.json'), 2,
         'importance must not be negative, found -0.5', subprocess=True),
    Case('solve-require-optimal', 'solve.py --require-optimal stopped by its time limit', 'solve',
         ('{hard_problem}', '--time-limit', '0.01', '--require-optimal', '--out',
          '{tmp}/solution.json'), 3, 'before proving the optimum', subprocess=True),
    Case('export-unpruned', 'export_pruned.py of a checkpoint without a pruning state',
         'export_pruned', (MDP, '{dense_pth}', '--out', '{tmp}/export2'), 2,
         '{dense_pth} holds no pruning state'),
    # ------------------------------------------------------------------ outputs
    Case('readonly-create-data', 'create_data.py into a read-only folder (before the work)',
         'create_data', ('nuscenes', '--root-path', '{root}', '--version', 'v1.0-mini',
                         '--out-dir', '{readonly}/infos'), 1,
         '--out-dir {readonly}/infos: {readonly} is not writable'),
    Case('readonly-export', 'export_pruned.py into a read-only folder', 'export_pruned',
         (MDP, '{masked_pth}', '--out', '{readonly}/export'), 1,
         '--out folder {readonly}/export: {readonly} is not writable'),
    Case('readonly-solve', 'solve.py into a read-only folder', 'solve',
         ('{problem}', '--out', '{readonly}/solution.json'), 1,
         '--out folder {readonly}: {readonly} is not writable'),
    Case('readonly-benchmark', 'benchmark.py --out into a read-only folder', 'benchmark',
         (SMALL, '--fake-data', '--out', '{readonly}/fps.json'), 1,
         '--out folder {readonly}: {readonly} is not writable'),
    Case('empty-split', 'a split with 0 samples (written, with a warning naming it)',
         'create_data', ('nuscenes', '--root-path', '{one_scene_root}', '--version', 'v1.0-mini',
                         '--out-dir', '{tmp}/one_scene_infos'), 0,
         "split 'val' (the devkit's 'mini_val' scenes) has 0 samples"),
    Case('other-checkout', 'a tool of one checkout importing mmdp from another', 'train',
         (SMALL,), 2, 'lives in {other_checkout} but imports mmdp from ', subprocess=True),
]


# ---------------------------------------------------------------------- the inputs
def _masked_checkpoint(model, path):
    """A checkpoint as a pruning run writes it after its event: three groups at half width."""
    import torch

    from mmdp.pruning import CHECKPOINT_KEY, PruningMasks, PruningState
    from mmdp.structure import StructureChoice, derive_structure

    structure = derive_structure(model, HOOK_SHAPE)
    groups = [g for g, full in structure.groups.items() if full >= 128][:3]
    choice = StructureChoice({g: structure.groups[g] // 2 for g in groups})
    PruningMasks(structure, choice).apply_(model)
    state = PruningState()
    state.update(choice, {'event': 1})
    torch.save({'meta': {'iter': 3}, 'state_dict': model.state_dict(),
                CHECKPOINT_KEY: state.to_dict()}, path)


def _read_only(path):
    """A folder this process cannot write, root included (root ignores permission bits, not
    the immutable attribute)."""
    os.makedirs(path)
    if os.geteuid() == 0:
        subprocess.run(['chattr', '+i', path], check=True)
    else:
        os.chmod(path, 0o555)


def _writable_again(path):
    if os.geteuid() == 0:
        subprocess.run(['chattr', '-i', path], check=True)
    else:
        os.chmod(path, 0o755)


@pytest.fixture(scope='module')
def paths(nusc_infos, tmp_path_factory):
    import json

    import torch

    from mmdp.export import export_pruned
    from mmdp.latency import device_name
    from mmdp.latency.config import build_from_config
    from projects.streampetr.datasets.synthetic_nuscenes import make_synthetic_nuscenes
    from formula_tables import formula_table
    from test_resume_kill import formula_table as hook_table
    from test_resume_kill import small_model

    tmp = str(tmp_path_factory.mktemp('reliability'))
    out = {'tmp': tmp, 'root': nusc_infos['root'], 'train_pkl': nusc_infos['train'],
           'val_pkl': nusc_infos['val']}
    out['truncated_pkl'] = osp.join(tmp, 'truncated.pkl')
    with open(nusc_infos['train'], 'rb') as f:
        data = f.read()
    with open(out['truncated_pkl'], 'wb') as f:
        f.write(data[:len(data) // 2])

    model = small_model()
    out['table'] = hook_table(model, osp.join(tmp, 'table.json'))
    with open(out['table']) as f:
        table = json.load(f)
    group = next(iter(table['widths']))
    table['widths'][group] = table['widths'][group][1:]
    out['bad_grid_table'] = osp.join(tmp, 'bad_grid.json')
    with open(out['bad_grid_table'], 'w') as f:
        json.dump(table, f)
    out['bad_json'] = osp.join(tmp, 'truncated.json')
    with open(out['table']) as f, open(out['bad_json'], 'w') as g:
        g.write(f.read()[:200])
    # A table of this CPU at the benchmark's input (six views of the config's img_size).
    bench_model, _ = build_from_config(SMALL, (6, 3, 96, 256))
    out['cpu_table'] = osp.join(tmp, 'cpu_table.json')
    formula_table(bench_model, (6, 3, 96, 256), STEP, out['cpu_table'], device_name('cpu'))

    out['dense_pth'] = osp.join(tmp, 'dense.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, out['dense_pth'])
    out['masked_pth'] = osp.join(tmp, 'iter_3.pth')
    _masked_checkpoint(model, out['masked_pth'])
    out['export'] = osp.join(tmp, 'export')
    _, out['pruned_pth'] = export_pruned(MDP, out['masked_pth'], out['export'])

    from mmdp.latency.models import BilinearLutLatency
    from mmdp.latency.table import LatencyTable
    problem = BilinearLutLatency(LatencyTable.load(out['table']), fitted=False).to_problem(
        budget_ratio=0.5)
    out['problem'] = osp.join(tmp, 'problem.json')
    with open(out['problem'], 'w') as f:
        json.dump(problem, f)
    problem['layers'][0]['importance'][0] = -0.5
    out['negative_problem'] = osp.join(tmp, 'negative_problem.json')
    with open(out['negative_problem'], 'w') as f:
        json.dump(problem, f)
    # Building the MILP of a ResNet-34 problem alone outlasts a 10 ms limit (test_solvers).
    from mmdp.solvers.synthetic import resnet_problem
    out['hard_problem'] = osp.join(tmp, 'hard_problem.json')
    resnet_problem(34, 16).save(out['hard_problem'])

    out['one_scene_root'] = str(make_synthetic_nuscenes(osp.join(tmp, 'one_scene'), 1, 2,
                                                        (160, 90), seed=0, progress=False))
    out['readonly'] = osp.join(tmp, 'readonly')
    _read_only(out['readonly'])
    # A copy of tools/train.py in a checkout without its own mmdp.
    out['other_checkout'] = osp.join(tmp, 'copy')
    os.makedirs(osp.join(out['other_checkout'], 'tools'))
    shutil.copy(osp.join(ROOT, 'tools', 'train.py'), osp.join(out['other_checkout'], 'tools'))
    yield out
    _writable_again(out['readonly'])


def expand(args, paths) -> list:
    data = ['train_dataloader.dataset.data_root={root}/', 'train_dataloader.dataset.ann_file='
            '{train_pkl}', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None']
    testdata = ['test_dataloader.dataset.data_root={root}/',
                'test_dataloader.dataset.ann_file={val_pkl}', 'test_evaluator.data_root={root}/',
                'test_evaluator.ann_file={val_pkl}']
    hook = ['latency_input_shape=(1, 3, 64, 128)', 'custom_hooks.1.latency_table={table}',
            f'custom_hooks.1.latency_device={FORMULA_DEVICE}']
    out = []
    for arg in args:
        if arg in ('@data', '@testdata', '@hook'):
            extra = {'@data': data, '@testdata': testdata, '@hook': hook}[arg]
            out += ([] if '--cfg-options' in out else ['--cfg-options']) + extra
        elif arg == '--cfg-options' and '--cfg-options' in out:
            continue  # one --cfg-options list
        else:
            out.append(arg)
    return [a.format(**paths) for a in out]


def run_case(case: Case, paths, capsys):
    argv = expand(case.args, paths)
    if case.subprocess:
        env = dict(os.environ)
        tool = osp.join(ROOT, 'tools', f'{case.tool}.py')
        if case.id == 'other-checkout':
            tool = osp.join(paths['other_checkout'], 'tools', f'{case.tool}.py')
        proc = subprocess.run([sys.executable, tool, *argv], capture_output=True, text=True,
                              cwd=ROOT, env=env)
        return proc.returncode, proc.stderr
    from mmdp.cli import run
    main = load_tool(case.tool).main
    with warnings.catch_warnings(record=True) as caught, as_a_new_process():
        warnings.simplefilter('always')
        code = run(main, argv)
    err = capsys.readouterr().err + ''.join(f'{w.message}\n' for w in caught)
    return code, err


@contextlib.contextmanager
def as_a_new_process():
    """Drop the mmengine instances (loggers, scopes, visualizers, message hubs) that a tool run
    in this process created, as its own process would. A runner names them by config and
    second: two cases started within one second would otherwise share the first one's logger,
    whose stream is a pytest capture closed since."""
    from mmengine.utils import ManagerMixin

    def managed(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from managed(sub)

    before = {cls: set(cls._instance_dict) for cls in managed(ManagerMixin)}
    try:
        yield
    finally:
        for cls in managed(ManagerMixin):
            for name in set(cls._instance_dict) - before.get(cls, set()):
                instance = cls._instance_dict.pop(name)
                for handler in getattr(instance, 'handlers', [])[:]:
                    instance.removeHandler(handler)
                    handler.close()


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_case(case, paths, capsys):
    import torch
    if case.cpu_only and torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    code, err = run_case(case, paths, capsys)
    assert code == case.code, err[-3000:]
    assert case.message.format(**paths) in err, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]


# ---------------------------------------------------------------------- the doc
def doc_text() -> str:
    lines = [
        '# Reliability: bad inputs and faults, and what the tools answer',
        '',
        'Generated from `tests/test_reliability.py` (`python tests/test_reliability.py '
        '--write-doc`); the test runs every row and checks its exit code and that its message '
        'holds the text below (`{...}` are the test\'s files; `@data` stands for the '
        '`--cfg-options` pointing the config at the test\'s synthetic nuScenes, `@hook` for its '
        'latency table). Exit codes: 0 done, 1 the run failed (the message says why), 2 bad '
        'usage or input (the message names the file, key or number and what is allowed). A '
        'user error is one message, never a traceback; `MMDP_TRACEBACK=1` shows the traceback '
        'anyway.',
        '',
        '| fault | command | exit | message (contains) |',
        '| --- | --- | --- | --- |',
    ]
    for case in CASES:
        message = case.message.replace('\n', ' ').replace('|', '\\|').strip()
        command = case.command.replace('|', '\\|')
        lines.append(f'| {case.what} | `{command}` | {case.code} | {message} |')
    return '\n'.join(lines) + '\n' + DOC_TAIL


DOC_TAIL = '''
## Kills and resumes

`tests/test_resume_kill.py` kills a pruning run (small MDP config, `load_from` a dense
checkpoint, checkpoints every 2 iterations, the event before iteration 3) with SIGKILL and resumes
it with `--resume` each time:

- killed after iteration 1, before any checkpoint: no checkpoint to resume from, so the run
  starts from `load_from` and says so (its first loss is the killed run's first loss);
- killed half-way through writing `iter_4.pth`, after the event: `iter_4.pth` was never there
  (checkpoints are written to a temporary file and renamed); the run resumes `iter_2.pth` and
  runs the event again; the first decision's files stay (under their names when the decision is
  the same, else kept aside as `event1_iter3_superseded1_*.json`); the next save of `iter_4.pth`
  removes the half-written temporary;
- killed after iteration 4 (`iter_4.pth` written): the run resumes `iter_4.pth` with the pruned
  structure and writes no new event files.

`tests/test_distributed.py` trains the same config with `bash tools/dist_train.sh CONFIG 2` on the
CPU (gloo) through its pruning event; the hook checks that both ranks hold the same masks and
weights after it. `bash tools/dist_test.sh` then evaluates the checkpoint on two CPU processes.

## Other guarantees

- Checkpoints, latency tables, event files, exported models and info files are written
  atomically: a reader or a killed run never sees half a file.
- `--resume` finds the work dir's latest checkpoint through MMEngine's `last_checkpoint` (an
  absolute path, written in place); where that names a path that moved with the work dir, it
  takes the file of that name in the work dir, and where it is missing or empty (killed while
  written), the `iter_N.pth` with the largest N.
- An exported `pruned.py` holds the whole config and names its weights relative to itself
  (`{{ fileDirname }}/pruned.pth`): the export folder can be moved.
- `load_from`, `tools/test.py` and `tools/benchmark.py` load strictly; `--allow-partial-load`
  loads a partial checkpoint on purpose (an ImageNet backbone).
- The tools run the `mmdp` and `projects` of the checkout they live in: an editable install
  (`pip install -e`) maps both to the checkout it was made from, which a copied checkout would
  otherwise import silently. Each tool puts its own checkout first on `sys.path` and refuses
  to run (exit 2) when they still come from elsewhere. `python -m pytest` and your own scripts
  do not: set `PYTHONPATH` to the checkout (or reinstall with `pip install -e .` there).
'''


def test_doc_is_current():
    with open(DOC) as f:
        assert f.read() == doc_text(), 'run: python tests/test_reliability.py --write-doc'


if __name__ == '__main__':
    if sys.argv[1:] == ['--write-doc']:
        with open(DOC, 'w') as f:
            f.write(doc_text())
        print(f'wrote {DOC}')
    else:
        sys.exit('usage: python tests/test_reliability.py --write-doc')


# ---------------------------------------------------------------------- beyond the table
def test_the_suggested_profile_command_makes_the_table_the_run_needs(paths, capsys):
    """A table of another input shape: the hook's message names a command that writes a new
    table (not a resume of the mismatching one) at the run's input and step, and that table
    passes the hook's checks."""
    import shlex

    from mmdp.cli import run
    from mmdp.latency import LatencyTable
    from mmdp.structure import derive_structure
    from test_resume_kill import small_model

    shape = (1, 3, 32, 64)
    argv = expand((MDP, '@data', '@hook', f'latency_input_shape={shape}'), paths)
    code = run(load_tool('train').main, argv)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    command = shlex.split(err.split('`')[1])
    assert command[:2] == ['python', 'tools/profile_latency.py']
    out = command[command.index('--out') + 1]
    assert out != paths['table'] and not osp.exists(out)
    assert command[command.index('--step') + 1] == str(STEP)
    assert f'then set custom_hooks.1.latency_table={out}' in err
    # The command as given, with fewer timings to keep the test short.
    load_tool('profile_latency').main(command[2:] + ['--repeats', '1', '--warmup', '0',
                                                     '--samples', '3'])
    table = LatencyTable.load(out, input_shape=shape, dtype='fp32', runtime='torch')
    table.check_structure(derive_structure(small_model(), shape))
    assert table.meta['step'] == STEP


def test_a_moved_export_folder_and_work_dir_still_load(paths, tmp_path):
    from mmengine.config import Config

    from mmdp.checkpoint_compat import latest_checkpoint

    moved = str(tmp_path / 'moved_export')
    shutil.copytree(paths['export'], moved)
    cfg = Config.fromfile(osp.join(moved, 'pruned.py'))
    assert cfg.load_from == osp.join(moved, 'pruned.pth')
    assert '_base_' not in open(osp.join(moved, 'pruned.py')).read()
    # mmengine's last_checkpoint holds an absolute path; the moved work dir is found anyway.
    work = tmp_path / 'work'
    work.mkdir()
    shutil.copy(paths['masked_pth'], work / 'iter_3.pth')
    (work / 'last_checkpoint').write_text('/somewhere/else/work/iter_3.pth')
    assert latest_checkpoint(str(work)) == str(work / 'iter_3.pth')
    (work / 'last_checkpoint').write_text('')  # killed while mmengine wrote it
    shutil.copy(paths['masked_pth'], work / 'iter_12.pth')
    assert latest_checkpoint(str(work)) == str(work / 'iter_12.pth')


def test_validate_latency_writes_beside_its_table(tmp_path, monkeypatch):
    config = tmp_path / 'resnet.py'
    config.write_text("default_scope = 'mmdet'\n"
                      "model = dict(type='ResNet', depth=18, out_indices=(2, 3))\n"
                      'latency_input_shape = (1, 3, 32, 64)\n')
    tables = tmp_path / 'tables'
    table = str(tables / 'table.json')
    load_tool('profile_latency').main([str(config), '--out', table, '--step', '256', '--repeats',
                                       '1', '--warmup', '0', '--samples', '3', '--device', 'cpu'])
    monkeypatch.chdir(tmp_path)
    load_tool('validate_latency').main([str(config), '--table', table, '-n', '2', '--repeats',
                                        '1', '--warmup', '0', '--device', 'cpu'])
    assert sorted(os.listdir(tables)) == ['latency_validation.json', 'latency_validation.png',
                                          'table.json']
    assert sorted(os.listdir(tmp_path)) == ['resnet.py', 'tables']


def test_allow_partial_load_loads_a_mismatching_checkpoint_on_purpose(paths, capsys):
    from mmdp.cli import run

    code = run(load_tool('benchmark').main, [SMALL, paths['pruned_pth'], '--fake-data',
                                             '--samples', '1', '--warmup', '0',
                                             '--allow-partial-load'])
    assert code == 0, capsys.readouterr().err[-3000:]
