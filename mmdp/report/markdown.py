"""The Markdown report: a table of every run and the figures, next to each other in one folder."""
import os
import os.path as osp

from mmdp.fileio import atomic_write_text
from mmdp.jointprune.plot import plot_trajectory

from . import figures


def _fmt(value, spec='.3f'):
    return '-' if value is None else format(value, spec)


def write_report(runs: list, out_dir: str) -> str:
    """Write `out_dir/report.md` and its PNG figures; returns the Markdown path. The first run is
    the reference of the speed-up column (give the dense run first)."""
    os.makedirs(out_dir, exist_ok=True)
    lines = ['# Pruning report', '', '| run | mAP | NDS | FPS | speed-up | device, precision | '
             'predicted backbone ms (before -> after) | blocks removed |', '|' + ' --- |' * 8]
    ref_fps = runs[0].fps['fps'] if runs and runs[0].fps else None
    acc_rows, latency_points = [], []
    for run in runs:
        fps = run.fps['fps'] if run.fps else None
        last = run.events[-1] if run.events else None
        pred = (f"{last['predicted_ms']['before']:.3g} -> {last['predicted_ms']['after']:.3g}"
                if last else '-')
        device = f"{run.fps['device_name']}, {run.fps['precision']}" if run.fps else '-'
        speedup = f'{fps / ref_fps:.2f}x' if fps and ref_fps else '-'
        lines.append(f"| {run.name} | {_fmt(run.metrics.get('mAP'))} | "
                     f"{_fmt(run.metrics.get('NDS'))} | {_fmt(fps, '.2f')} | {speedup} | "
                     f"{device} | {pred} | {len(last['removed_blocks']) if last else '-'} |")
        if fps and 'mAP' in run.metrics:
            acc_rows.append((run.name, fps, run.metrics['mAP'], run.metrics['NDS']))
        latency = (run.fps or {}).get('latency')
        if latency:
            for model, ms in latency['predicted_backbone_ms'].items():
                latency_points.append((run.name, model, ms, latency['measured_backbone_ms']))
    if acc_rows:
        figures.accuracy_speed_figure(acc_rows, osp.join(out_dir, 'accuracy_vs_fps.png'))
        lines += ['', '![accuracy vs FPS](accuracy_vs_fps.png)']
    if latency_points:
        figures.latency_figure(latency_points,
                               osp.join(out_dir, 'latency_predicted_vs_measured.png'))
        lines += ['', '## Latency: predicted vs measured (backbone)', '',
                  '| run | model | predicted ms | measured ms | error |', '|' + ' --- |' * 5]
        lines += [f'| {r} | {m} | {p:.2f} | {q:.2f} | {100 * (p - q) / q:+.1f}% |'
                  for r, m, p, q in latency_points]
        lines += ['', '![latency](latency_predicted_vs_measured.png)']
    for run in runs:
        if run.events:
            last = run.events[-1]
            png = f'widths_{run.name}.png'
            figures.widths_figure(last, f'{run.name}: channels per group', osp.join(out_dir, png))
            removed = ', '.join(last['removed_blocks']) or 'none'
            lines += ['', f'## {run.name}', '', f'{len(run.events)} pruning event(s); blocks '
                      f'removed: {removed}.', '', f'![widths]({png})']
        if run.trajectory:
            png = f'trajectory_{run.name}.png'
            plot_trajectory(run.trajectory, osp.join(out_dir, png))
            lines += ['', f'## {run.name}: JointPruning search', '', f'![search]({png})']
    path = osp.join(out_dir, 'report.md')
    atomic_write_text(path, '\n'.join(lines) + '\n')
    return path
