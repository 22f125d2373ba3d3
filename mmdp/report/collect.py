"""What a run left in its work directory: nuScenes metrics (tools/test.py or validation), FPS
(tools/benchmark.py --out fps*.json), the paired speed-up over the dense model (tools/speedup.py
--out speedup*.json), pruning-event summaries and a JointPruning trajectory."""
import glob
import json
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Optional

from mmdp.jointprune.plot import read_trajectory

METRIC_PREFIX = 'NuScenes metric/pred_instances_3d_NuScenes/'


@dataclass
class RunRecord:
    name: str
    work_dir: str
    metrics: dict = field(default_factory=dict)  # mAP, NDS, ...
    fps: Optional[dict] = None  # tools/benchmark.py output
    speedup: Optional[dict] = None  # tools/speedup.py output (this run as A)
    events: list = field(default_factory=list)  # pruning-event summaries, in order
    trajectory: list = field(default_factory=list)  # JointPruning search steps


def _newest(paths):
    return max(paths, key=os.path.getmtime) if paths else None


def _metrics(work_dir: str) -> dict:
    """The newest line (JSON object) holding nuScenes metrics in any log JSON of the run."""
    best, best_time = {}, -1.0
    for path in glob.glob(osp.join(work_dir, '**', '*.json'), recursive=True):
        with open(path) as f:
            for line in f:
                if METRIC_PREFIX + 'NDS' not in line:
                    continue
                row = json.loads(line)
                if os.path.getmtime(path) >= best_time:
                    best_time = os.path.getmtime(path)
                    best = {k[len(METRIC_PREFIX):]: v for k, v in row.items()
                            if k.startswith(METRIC_PREFIX)}
    return best


def collect_run(work_dir: str, name: Optional[str] = None) -> RunRecord:
    if not osp.isdir(work_dir):
        raise FileNotFoundError(f'work directory {work_dir} does not exist')
    record = RunRecord(name or osp.basename(osp.normpath(work_dir)), work_dir)
    record.metrics = _metrics(work_dir)
    fps_file = _newest(glob.glob(osp.join(work_dir, 'fps*.json')))
    if fps_file:
        with open(fps_file) as f:
            record.fps = json.load(f)
    speedup_file = _newest(glob.glob(osp.join(work_dir, 'speedup*.json')))
    if speedup_file:
        with open(speedup_file) as f:
            record.speedup = json.load(f)
    summaries = glob.glob(osp.join(work_dir, '**', 'event*_summary.json'), recursive=True)
    for path in sorted(summaries, key=lambda p: int(osp.basename(p)[5:].split('_')[0])):
        with open(path) as f:
            record.events.append(json.load(f))
    traj = _newest(glob.glob(osp.join(work_dir, '**', '*trajectory*.jsonl'), recursive=True))
    if traj:
        record.trajectory = read_trajectory(traj)
    return record
