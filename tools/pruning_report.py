"""Summarise the pruning events of training runs as a Markdown table.

    python tools/pruning_report.py WORK_DIR [WORK_DIR ...] [--out REPORT.md]

Reads `WORK_DIR/pruning/*_summary.json` (written by `PruningHook`) and reports per run: the
events and their solver status, the solve time, the predicted backbone latency before the first
and after the last event, the widths per ResNet stage (residual width, then the inner widths of
each block, '-' for a removed block) and the removed blocks.
"""
import argparse
import glob
import json
import os.path as osp
import re
from collections import defaultdict

from mmdp.fileio import atomic_write

# A ResNet group name: '<prefix>layerS.residual' or '<prefix>layerS.B.convJ'.
GROUP = re.compile(r'(?:^|\.)layer(\d+)\.(?:residual|(\d+)\.conv(\d+))$')


def load_summaries(work_dir: str) -> list:
    paths = glob.glob(osp.join(work_dir, 'pruning', 'event*_summary.json'))
    if not paths:
        raise FileNotFoundError(f'{work_dir}: no pruning/event*_summary.json (was the run '
                                'trained with PruningHook past its first event?)')
    summaries = []
    for path in paths:
        with open(path) as f:
            summaries.append(json.load(f))
    return sorted(summaries, key=lambda s: s['event'])


def stage_widths(groups: dict, removed: set) -> dict:
    """{stage: 'res W/F; a/b a/b ...'} from {group: {'before', 'after'}}: the residual width
    after/before, then each block's inner widths ('-' for a removed block)."""
    residual, inner = {}, defaultdict(dict)  # inner: stage -> {block name: {conv: width}}
    for name, w in groups.items():
        match = GROUP.search(name)
        if not match:
            continue
        stage, block, conv = match.groups()
        if block is None:
            residual[stage] = f"{w['after']}/{w['before']}"
        else:
            inner[stage].setdefault(name.rsplit('.', 1)[0], {})[int(conv)] = w['after']
    out = {}
    for stage in sorted(residual, key=int):
        blocks = ['-' if block in removed else '/'.join(str(w) for _, w in sorted(convs.items()))
                  for block, convs in sorted(inner[stage].items(),
                                             key=lambda kv: int(kv[0].rsplit('.', 1)[1]))]
        out[f'layer{stage}'] = f"res {residual[stage]}; {' '.join(blocks)}"
    return out


def report_row(work_dir: str) -> dict:
    summaries = load_summaries(work_dir)
    first, last = summaries[0], summaries[-1]
    groups = {g: {'before': first['groups'][g]['before'], 'after': last['groups'][g]['after']}
              for g in first['groups']}
    removed = set(last['removed_blocks'])
    return {
        'run': osp.basename(osp.normpath(work_dir)),
        'events': f"{len(summaries)} ({', '.join(sorted({s['status'] for s in summaries}))})",
        'solve_s': sum(s['seconds'] for s in summaries),
        'predicted_ms': f"{first['predicted_ms']['before']:.4g} -> "
                        f"{last['predicted_ms']['after']:.4g}",
        'ratio': last['predicted_ms']['after'] / first['predicted_ms']['before'],
        'stages': stage_widths(groups, removed),
        'removed': sorted(re.sub(r'^.*?(layer\d+\.\d+)$', r'\1', b) for b in removed),
    }


def to_markdown(rows: list) -> str:
    stages = sorted({s for row in rows for s in row['stages']}, key=lambda s: int(s[5:]))
    head = ['run', 'events', 'solve (s)', 'predicted ms', 'kept', *stages, 'removed blocks']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for row in rows:
        cells = [row['run'], row['events'], f"{row['solve_s']:.2f}", row['predicted_ms'],
                 f"{row['ratio']:.0%}", *[row['stages'].get(s, '') for s in stages],
                 ', '.join(row['removed']) or 'none']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('work_dirs', nargs='+')
    parser.add_argument('--out', help='also write the table to this file')
    args = parser.parse_args(argv)
    text = to_markdown([report_row(w) for w in args.work_dirs])
    print(text, end='')
    if args.out:
        def write(tmp):
            with open(tmp, 'w') as f:
                f.write(text)
        atomic_write(args.out, write)
    return text


if __name__ == '__main__':
    main()
