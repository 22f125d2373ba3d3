"""Markdown report with PNG figures over runs: per-group widths, removed blocks, predicted vs
measured latency, mAP / NDS against FPS. Give the dense run first (the speed-up reference)."""
import argparse

from mmdp.report import collect_run, write_report


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('work_dirs', nargs='+', help='run work directories, dense first')
    parser.add_argument('--out', default='work_dirs/report', help='output folder')
    args = parser.parse_args()
    path = write_report([collect_run(d) for d in args.work_dirs], args.out)
    print(f'report written to {path}')


if __name__ == '__main__':
    main()
