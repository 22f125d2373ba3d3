"""Plot a JointPruning search trajectory (the JSON lines the hook writes) to a PNG."""
import json
import os
import tempfile

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def read_trajectory(path) -> list:
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
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
    for i, name in enumerate(names):
        axes[3].plot(steps, [r['vector'][i] for r in records],
                     label='.'.join(name.split('.')[-2:]))
    axes[3].set_ylabel('pruning vector (1 = dense)')
    axes[3].set_xlabel('search step')
    axes[3].legend(fontsize=6, ncol=3)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix='.png')
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
