"""Plot a JointPruning search trajectory.

    python tools/plot_jointprune.py WORK_DIR/jointprune_trajectory.jsonl --out trajectory.png

Panels per search step: the loss of the iterate, its predicted latency against the budget, the
step length and perturbation scale, and every coordinate of the pruning vector.
"""
import argparse

from mmdp.jointprune import plot_trajectory, read_trajectory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('trajectory', help='jointprune_trajectory.jsonl written by the hook')
    parser.add_argument('--out', required=True, help='PNG file to write')
    args = parser.parse_args(argv)
    plot_trajectory(read_trajectory(args.trajectory), args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
