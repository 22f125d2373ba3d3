"""Plot a JointPruning search trajectory (the JSON lines the hook writes) to a PNG."""
import json

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from mmdp.fileio import atomic_write  # noqa: E402


def read_trajectory(path) -> list:
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f'{path} line {number}: not valid JSON ({e})') from None
    if not records:
        raise ValueError(f'{path}: no search steps recorded')
    return records


def plot_trajectory(records: list, path) -> None:
    """Loss, predicted latency against the budget, step and perturbation scale, and every
    coordinate of the pruning vector, per search step."""
    steps = [r['step'] for r in records]
    fig, axes = plt.subplots(4, 1, figsize=(8, 11), sharex=True)
    axes[0].plot(steps, [r['loss'] for r in records], 'o-', label='iterate')
    axes[0].set_ylabel('search loss')
    axes[1].plot(steps, [r['latency'] for r in records], 'o-', label='predicted')
    axes[1].plot(steps, [r['budget'] for r in records], 'k--', label='budget')
    axes[1].set_ylabel(f"latency ({records[0].get('unit', 'ms')})")
    axes[1].legend()
    axes[2].semilogy(steps, [r['step_size'] for r in records], 'o-', label='step')
    axes[2].semilogy(steps, [r['sigma'] for r in records], 's-', label='sigma')
    axes[2].set_ylabel('normalised scale')
    axes[2].legend()
    names = records[0]['names']
    colors = plt.cm.tab20.colors
    for i, name in enumerate(names):
        axes[3].plot(steps, [r['vector'][i] for r in records], color=colors[i % len(colors)],
                     linestyle='-' if i < len(colors) else '--',
                     label='.'.join(name.split('.')[-2:]))
    axes[3].set_ylabel('pruning vector (1 = dense)')
    axes[3].set_xlabel('search step')
    axes[3].legend(fontsize=6, ncol=3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=100))
    finally:
        plt.close(fig)
