"""Export a checkpoint of a pruning run to a physically smaller model.

    python tools/export_pruned.py CONFIG CHECKPOINT --out DIR [--cfg-options key=value ...]

Writes DIR/pruned.py (all of CONFIG, backbone replaced by a `PrunedResNet` of the chosen widths
and removed blocks, neck inputs narrowed, pruning hooks dropped) and DIR/pruned.pth (the smaller
model's weights), which tools/test.py and tools/benchmark.py load like any other pair. Give the
same --cfg-options the run was trained with when they change the model; tools reading
DIR/pruned.py need those overrides again. pruned.py names its weights relative to itself: the
folder can be moved.
"""
import argparse
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

from mmengine.config import DictAction  # noqa: E402

import mmdp.checkpoint_compat  # noqa: F401,E402  (checkpoint loading on torch >= 2.6)
from mmdp.cli import UsageError, check_writable, entry  # noqa: E402
from mmdp.export import export_pruned  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='the config the pruning run was trained with')
    parser.add_argument('checkpoint', help='a checkpoint of that run after its pruning event')
    parser.add_argument('--out', required=True, help='folder for pruned.py and pruned.pth')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, xxx=yyy; the key must exist')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_writable(args.out, '--out folder')
    if not osp.isfile(args.checkpoint):
        raise UsageError(f'checkpoint {args.checkpoint} does not exist')
    config, weights = export_pruned(args.config, args.checkpoint, args.out, args.cfg_options)
    print(f'wrote {config} and {weights}')
    return 0


if __name__ == '__main__':
    entry(__file__, main)
