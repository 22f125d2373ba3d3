"""The Markdown report: a table of every run and the figures, next to each other in one folder."""
import os
import os.path as osp

from mmdp.fileio import atomic_write_text
from mmdp.jointprune.plot import plot_trajectory

from . import figures


def _fmt(value, spec='.3f'):
    return '-' if value is None else format(value, spec)


def speedup_cell(speedup) -> str:
    """The paired speed-up's median with the interquartile range of its per-round ratios."""
    if not speedup:
        return '-'
    s = speedup['speedup']
    return f"{s['median']:.2f}x (IQR {s['p25']:.2f}-{s['p75']:.2f}, {speedup['rounds']} rounds)"


def write_report(runs: list, out_dir: str) -> str:
    """Write `out_dir/report.md` and its PNG figures; returns the Markdown path. Give the dense
    run first. The speed-up column is each run's paired speed-up (tools/speedup.py, in its work
    directory): not a ratio of FPS measured at different times, which a busy machine skews."""
    os.makedirs(out_dir, exist_ok=True)
    lines = ['# Pruning report', '', '| run | mAP | NDS | FPS | speed-up | device, precision | '
             'predicted backbone ms (before -> after) | blocks removed |', '|' + ' --- |' * 8]
    acc_rows, latency_points = [], []
    for run in runs:
        fps = run.fps['fps'] if run.fps else None
        last = run.events[-1] if run.events else None
        pred = (f"{last['predicted_ms']['before']:.3g} -> {last['predicted_ms']['after']:.3g}"
                if last else '-')
        device = f"{run.fps['device_name']}, {run.fps['precision']}" if run.fps else '-'
        speedup = speedup_cell(run.speedup)
        lines.append(f"| {run.name} | {_fmt(run.metrics.get('mAP'))} | "
                     f"{_fmt(run.metrics.get('NDS'))} | {_fmt(fps, '.2f')} | {speedup} | "
                     f"{device} | {pred} | {len(last['removed_blocks']) if last else '-'} |")
        if fps and 'mAP' in run.metrics:
            acc_rows.append((run.name, fps, run.metrics['mAP'], run.metrics['NDS']))
        latency = (run.fps or {}).get('latency')
        if latency:
            for model, ms in latency['predicted_backbone_ms'].items():
                latency_points.append((run.name, model, ms, latency['measured_backbone_ms']))
    paired = [r.speedup for r in runs if r.speedup]
    if paired:
        lines += ['', 'Speed-up: frame time of the model named below over the run\'s, both timed '
                  'alternately in one process (tools/speedup.py); median and interquartile range '
                  'of the per-round ratios. ' + '; '.join(
                      f"{r.name}: against {r.speedup['b']['config']} ({r.speedup['runtime']}, "
                      f"{r.speedup['device_name']}, 5-95% {r.speedup['speedup']['p5']:.2f}-"
                      f"{r.speedup['speedup']['p95']:.2f})" for r in runs if r.speedup)]
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
            figures.widths_figure(last, f'{run.name}: widths per group', osp.join(out_dir, png))
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
