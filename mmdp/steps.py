"""A job run as the commands a user would type (tools/demo.py, tools/compare_methods.py): each
step is printed with its command line and wall time; a step whose output exists is skipped, so
an interrupted job goes on where it stopped."""
import json
import os.path as osp
import subprocess
import sys
import time

from mmdp.cli import RunError, UsageError

DATA = 'data/synthetic_nuscenes'  # the small configs' data_root
IMAGE_SIZE = (400, 225)  # the small configs' resize ratios assume it


def run_step(tag: str, step: str, cmd: list, done=None) -> None:
    """Run `python CMD` (a tool of this checkout, from the repository root) unless `done`
    exists; a failing step stops the job with its exit code."""
    if done and osp.exists(done):
        print(f'[{tag}] {step}: already done ({done})', flush=True)
        return
    print(f'[{tag}] {step}: python {" ".join(cmd)}', flush=True)
    start = time.time()
    # stderr passes through as it comes; its last 'error: ...' line (the tools' one-line
    # message) names the failure.
    proc = subprocess.Popen([sys.executable] + cmd, stderr=subprocess.PIPE, text=True)
    reason = ''
    for line in proc.stderr:
        sys.stderr.write(line)
        if line.startswith('error: ') or 'Error: ' in line:
            reason = line.strip()
    if proc.wait():
        raise RunError(f'{step} failed (exit {proc.returncode}): {reason or "see its output"}')
    print(f'[{tag}] {step}: finished in {time.time() - start:.0f} s', flush=True)


def last_checkpoint(work_dir: str) -> str:
    """The checkpoint MMEngine's `last_checkpoint` file in `work_dir` names."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def _check_existing_data(root: str, scenes: int, samples: int) -> None:
    """A synthetic set left by an earlier job is reused only if it has this job's size."""
    if not osp.isdir(root):
        return
    table = osp.join(root, 'v1.0-mini', 'scene.json')
    found = 'no v1.0-mini/scene.json'
    if osp.isfile(table):
        with open(table) as f:
            rows = json.load(f)
        counts = sorted({row['nbr_samples'] for row in rows})
        if len(rows) == scenes and counts == [samples]:
            return
        found = f'{len(rows)} scenes of {"/".join(map(str, counts))} samples'
    raise UsageError(f'{root} holds {found}; this job makes {scenes} scenes of {samples} '
                     f'samples: remove {root} (the job remakes it) or pass --scenes/--samples')


def synthetic_data(tag: str, scenes: int, samples: int) -> None:
    """The small configs' synthetic nuScenes and its info files, made unless present."""
    _check_existing_data(DATA, scenes, samples)
    run_step(tag, 'synthetic nuScenes', [
        'tools/make_synthetic_nuscenes.py', DATA, '--scenes', str(scenes), '--samples',
        str(samples), '--image-size', *map(str, IMAGE_SIZE)], done=DATA)
    run_step(tag, 'info files', ['tools/create_data.py', 'nuscenes', '--root-path', DATA,
                                 '--version', 'v1.0-mini', '--out-dir', DATA],
             done=osp.join(DATA, 'nuscenes_infos_val.pkl'))
