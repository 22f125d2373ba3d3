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
    """Per group: width before and after the (last) pruning event. Convs (backbone, neck) are
    drawn in channels; the head's parts (MLP hidden units, attention heads, learnable queries),
    whose widths differ by two orders of magnitude, in a panel of their own as the share kept,
    each bar labelled kept/dense. Groups of removed blocks and decoder layers are marked red."""
    removed = tuple(b + '.' for b in summary['removed_blocks'])
    convs = [g for g in summary['groups'] if g.startswith(('img_backbone.', 'img_neck.'))]
    head = [g for g in summary['groups'] if g not in convs]
    panels = [p for p in (convs, head) if p]
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(max(6, 0.28 * max(map(len, panels))), 4 * len(panels)))
    for ax, groups in zip(axes[:, 0], panels):
        gone = [g.startswith(removed) for g in groups]
        before = [summary['groups'][g]['before'] for g in groups]
        # A removed block's units are gone whatever width their group was given.
        after = [0 if out else summary['groups'][g]['after'] for g, out in zip(groups, gone)]
        x = list(range(len(groups)))
        if groups is convs:
            ax.bar(x, before, color='#cccccc', label='dense')
            ax.bar(x, after, color='#1f77b4', label='pruned')
            ax.set(ylabel='channels', title=title)
            labels = [g.split('backbone.')[-1] for g in groups]
        else:
            ax.bar(x, [1.0] * len(groups), color='#cccccc', label='dense')
            bars = ax.bar(x, [a / b for a, b in zip(after, before)], color='#ff7f0e',
                          label='pruned')
            ax.bar_label(bars, [f'{a}/{b}' for a, b in zip(after, before)], fontsize=6)
            ax.set(ylabel='share kept', ylim=(0, 1.15), title=f'{title}: head')
            # The tokens group's width counts the learnable queries.
            labels = [g.removeprefix('pts_bbox_head.').replace('tokens', 'tokens (queries)')
                      for g in groups]
        ax.set_xticks(x, labels, rotation=90, fontsize=7)
        for label, out in zip(ax.get_xticklabels(), gone):
            if out:
                label.set_color('#d62728')
        if any(gone):
            ax.set_title(ax.get_title() + ' (removed in red)')
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
