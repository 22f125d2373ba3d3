"""Make mmdet3d v2 info files (with the streaming keys) from a nuScenes root.

    python tools/create_data.py nuscenes --root-path data/nuscenes --version v1.0-trainval \
        --out-dir data/nuscenes --extra-tag nuscenes
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

from mmdp.cli import check_writable, entry  # noqa: E402
from projects.streampetr.datasets.nuscenes_converter import (  # noqa: E402
    VERSION_SPLITS, create_nuscenes_infos)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('dataset', choices=['nuscenes'], help='dataset kind')
    parser.add_argument('--root-path', required=True,
                        help='nuScenes root (holds samples/, maps/ and the version folder)')
    parser.add_argument('--version', default='v1.0-trainval',
                        help=f'one of {", ".join(VERSION_SPLITS)}')
    parser.add_argument('--out-dir', required=True, help='where the .pkl files go')
    parser.add_argument('--extra-tag', default='nuscenes', help='file name prefix')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_writable(args.out_dir, '--out-dir')  # before the work, not after it
    try:
        paths = create_nuscenes_infos(args.root_path, args.version, args.out_dir,
                                      args.extra_tag)
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f'error: {exc}')
    for split, path in paths.items():
        print(f'{split}: {path}')
    return 0


if __name__ == '__main__':
    entry(__file__, main)
