"""Evaluate a checkpoint with the config's test metric (nuScenes metrics via nuscenes-devkit)."""
import argparse
import os
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

from mmengine.config import DictAction  # noqa: E402
from mmengine.model import is_model_wrapper  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmdp.checkpoint_compat import check_loadable  # noqa: E402
from mmdp.cli import UsageError, entry  # noqa: E402
from mmdp.config_utils import check_info_files, load_config, set_cpu_distributed  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a 3D detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--allow-partial-load', action='store_true',
                        help='the checkpoint may miss or add keys or shapes; by default every '
                        'key must fit the model')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, xxx=yyy; the key must exist')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise UsageError(f'checkpoint {args.checkpoint} does not exist')
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    check_info_files(cfg, ['test'])
    cfg.load_from = args.checkpoint
    set_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    if not args.allow_partial_load:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        check_loadable(model, args.checkpoint, args.config)
    runner.test()
    return 0


if __name__ == '__main__':
    entry(__file__, main)
