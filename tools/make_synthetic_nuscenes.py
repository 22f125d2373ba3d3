"""Write a small synthetic dataset in the real nuScenes format (v1.0-mini).

    python tools/make_synthetic_nuscenes.py data/synthetic --scenes 2 --samples 6 \
        --image-size 400 225 --seed 0
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root holds `projects`

from projects.streampetr.datasets.synthetic_nuscenes import (  # noqa: E402
    FULL_IMAGE_SIZE, SCENES, make_synthetic_nuscenes)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', help='output folder (must be absent or empty)')
    parser.add_argument('--scenes', type=int, default=2,
                        help=f'number of scenes, 1..{len(SCENES)} (real mini scene names)')
    parser.add_argument('--samples', type=int, default=6, help='key frames per scene (2 Hz)')
    parser.add_argument('--image-size', type=int, nargs=2, default=FULL_IMAGE_SIZE,
                        metavar=('W', 'H'), help='camera image size; intrinsics are scaled')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-range', type=float, default=float('inf'), metavar='M',
                        help='annotate objects up to M metres from the ego (default: the '
                             "devkit's range of each class, 30-50 m)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        out = make_synthetic_nuscenes(args.out, args.scenes, args.samples,
                                      tuple(args.image_size), args.seed,
                                      max_range_m=args.max_range)
    except (ValueError, FileExistsError) as exc:
        sys.exit(f'error: {exc}')
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
