"""Convert an official StreamPETR checkpoint (exiawsh/StreamPETR, mmdet3d 0.17) for this port.

    python tools/convert_official_checkpoint.py OFFICIAL.pth OUT.pth [--config CONFIG]

Renames the keys and splits each attention's packed q/k/v projection (docs/official-checkpoint.md);
the result loads strictly, every key, into the model of CONFIG (default: the dense R50 704x256
config) and is checked by doing so before it is written. Accepts a raw state dict or
{'state_dict': ...}. A checkpoint of another model names its missing and unexpected keys, exits 1
and writes nothing.
"""
import argparse
import os.path as osp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

import torch  # noqa: E402

DEFAULT_CONFIG = 'configs/streampetr_r50_704_dense.py'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('official', help='official checkpoint (.pth)')
    parser.add_argument('out', help='converted checkpoint to write (.pth)')
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help=f'config whose model the weights are for (default {DEFAULT_CONFIG})')
    return parser.parse_args(argv)


def _read_state_dict(path):
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as e:  # any unreadable file: one line, not a traceback
        raise ValueError(f'{path}: cannot be read as a torch checkpoint ({type(e).__name__}: {e})')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{path}: holds neither a state dict nor {{"state_dict": ...}}')
    return state


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.official):
        print(f'error: {args.official} does not exist', file=sys.stderr)
        return 2
    from mmdet3d.registry import MODELS
    from mmengine.registry import init_default_scope

    from mmdp.config_utils import ConfigError, load_config
    from mmdp.fileio import atomic_write
    from projects.streampetr.models.official_checkpoint import (OfficialCheckpointError,
                                                                convert_state_dict)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    try:
        official = _read_state_dict(args.official)
        init_default_scope('mmdet3d')
        model = MODELS.build(cfg.model)
        state = convert_state_dict(official, model, cfg.class_names)
    except (ValueError, OfficialCheckpointError) as e:
        print(f'error: {args.official} is not an official StreamPETR checkpoint for '
              f'{args.config}: {e}', file=sys.stderr)
        return 1
    model.load_state_dict(state, strict=True)  # the guarantee this tool gives
    meta = dict(converted_from=osp.basename(args.official), config=args.config)
    atomic_write(args.out, lambda tmp: torch.save(dict(state_dict=state, meta=meta), tmp))
    print(f'wrote {args.out}: {len(state)} keys from {len(official)} official entries')
    return 0


if __name__ == '__main__':
    from mmdp.cli import entry  # noqa: E402  (after this checkout is on sys.path)
    entry(__file__, main)
