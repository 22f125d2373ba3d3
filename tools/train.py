"""Train a detector (dense or pruned) with MMEngine's runner, mmdet3d conventions."""
import argparse
import logging
import os
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

from mmengine.config import DictAction  # noqa: E402
from mmengine.model import is_model_wrapper  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from mmengine.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmdp.checkpoint_compat import check_loadable, latest_checkpoint  # noqa: E402
from mmdp.cli import UsageError, entry  # noqa: E402
from mmdp.config_utils import (check_info_files, load_config, scale_schedule,  # noqa: E402
                               set_cpu_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a 3D detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or the latest one in the work dir '
                        '(none there: start from load_from)')
    parser.add_argument('--allow-partial-load', action='store_true',
                        help='load_from may miss or add keys or shapes (e.g. an ImageNet '
                        'backbone); by default every key must fit')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, xxx=yyy; the key must exist')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def set_resume(cfg, resume) -> None:
    """`--resume PATH` resumes PATH; `--resume` the work dir's latest checkpoint or, when it has
    none (a run killed before its first checkpoint), nothing: the run starts from `load_from`."""
    if resume is None:
        return
    if resume != 'auto':
        if not osp.isfile(resume):
            raise UsageError(f'--resume {resume}: no such checkpoint')
        cfg.resume, cfg.load_from = True, resume
        return
    found = latest_checkpoint(cfg.work_dir)
    if found is None:
        start = f'load_from {cfg.load_from}' if cfg.get('load_from') else 'initial weights'
        print_log(f'--resume: no checkpoint in {cfg.work_dir} to resume from; starting from '
                  f'{start}', logger='current', level=logging.WARNING)
        cfg.resume = False
        return
    print_log(f'--resume: resuming from {found}', logger='current')
    cfg.resume, cfg.load_from = True, found


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') != 'AmpOptimWrapper':
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
        print_log('mixed precision training enabled', logger='current', level=logging.INFO)
    check_info_files(cfg, ['train'] + (['val'] if cfg.get('val_cfg') else []))
    set_resume(cfg, args.resume)
    if cfg.get('load_from') and not osp.isfile(cfg.load_from):
        raise UsageError(f'load_from {cfg.load_from}: no such checkpoint')
    set_cpu_distributed(cfg)
    scale_schedule(cfg, int(os.environ.get('WORLD_SIZE', 1)))
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if cfg.get('load_from') and not args.allow_partial_load:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        check_loadable(model, cfg.load_from, args.config)
    runner.train()
    return 0


if __name__ == '__main__':
    entry(__file__, main)
