"""Export a checkpoint of a pruning run to a physically smaller model.

    python tools/export_pruned.py CONFIG CHECKPOINT --out DIR [--cfg-options key=value ...]

Writes DIR/pruned.py (inherits CONFIG, backbone replaced by a `PrunedResNet` of the chosen widths
and removed blocks, neck inputs narrowed, pruning hooks dropped) and DIR/pruned.pth (the smaller
model's weights), which tools/test.py and tools/benchmark.py load like any other pair. Give the
same --cfg-options the run was trained with when they change the model; tools reading
DIR/pruned.py need those overrides again.
"""
import argparse

from mmengine.config import DictAction

import mmdp.checkpoint_compat  # noqa: F401  (checkpoint loading on torch >= 2.6)
from mmdp.export import export_pruned


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
    config, weights = export_pruned(args.config, args.checkpoint, args.out, args.cfg_options)
    print(f'wrote {config} and {weights}')


if __name__ == '__main__':
    main()
