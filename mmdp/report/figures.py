"""Matplotlib figures of a report (Agg backend: no display needed)."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from mmdp.fileio import atomic_write  # noqa: E402


def _save(fig, path):
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format='png'))
    plt.close(fig)


def widths_figure(summary: dict, title: str, path: str) -> None:
    """Per group: width before and after the (last) pruning event."""
    groups = list(summary['groups'])
    removed = tuple(b + '.' for b in summary['removed_blocks'])
    gone = [g.startswith(removed) for g in groups]
    before = [summary['groups'][g]['before'] for g in groups]
    # A removed block's convs are gone whatever width their group was given.
    after = [0 if out else summary['groups'][g]['after'] for g, out in zip(groups, gone)]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(groups)), 4))
    x = range(len(groups))
    ax.bar(x, before, color='#cccccc', label='dense')
    ax.bar(x, after, color='#1f77b4', label='pruned')
    ax.set_xticks(list(x), [g.split('backbone.')[-1] for g in groups], rotation=90, fontsize=7)
    for label, out in zip(ax.get_xticklabels(), gone):
        if out:
            label.set_color('#d62728')
    ax.set(ylabel='channels', title=f'{title} (removed blocks in red)' if any(gone) else title)
    ax.legend()
    _save(fig, path)


def latency_figure(points: list, path: str) -> None:
    """points: (run, model, predicted ms, measured ms)."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for model in sorted({p[1] for p in points}):
        sel = [p for p in points if p[1] == model]
        ax.scatter([p[3] for p in sel], [p[2] for p in sel], label=model)
    values = [v for p in points for v in p[2:]]
    lims = [min(values) * 0.9, max(values) * 1.1]
    ax.plot(lims, lims, 'k--', lw=1)
    ax.set(xlim=lims, ylim=lims, xlabel='measured backbone latency (ms)',
           ylabel='predicted (ms)', title='latency: predicted vs measured')
    ax.legend()
    _save(fig, path)


def accuracy_speed_figure(rows: list, path: str) -> None:
    """rows: (run, fps, mAP, NDS)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, fps, m_ap, nds in rows:
        ax.scatter(fps, m_ap, marker='o', color='#1f77b4')
        ax.scatter(fps, nds, marker='s', color='#ff7f0e')
        ax.annotate(run, (fps, nds), fontsize=8, xytext=(3, 3), textcoords='offset points')
    ax.scatter([], [], marker='o', color='#1f77b4', label='mAP')
    ax.scatter([], [], marker='s', color='#ff7f0e', label='NDS')
    ax.set(xlabel='FPS (batch 1, six views)', ylabel='score', title='accuracy vs speed')
    ax.legend()
    _save(fig, path)
