"""Do a StreamPETR detector's queries still differ from each other? Spread over queries of the
query position embedding, each attention's entropy and query specificity, the decoder output
and the class scores, on val samples (projects/streampetr/query_spread.py says what each is).

    python tools/diagnose_queries.py CONFIG [CHECKPOINT] [--samples 6] [--out FILE.json]

Without a checkpoint: the randomly initialised model, the reference to compare a trained one to.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmdp, projects

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmdp.cli import check_writable, counts, entry  # noqa: E402
from mmdp.config_utils import check_info_files  # noqa: E402
from mmdp.fileio import atomic_write_json  # noqa: E402
from mmdp.runtime.detector import build_detector  # noqa: E402
from projects.streampetr.query_spread import query_spread  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', help='default: random initial weights')
    parser.add_argument('--samples', type=counts(1), default=6,
                        help='val samples, spread evenly over the split (default 6)')
    parser.add_argument('--out', help='also write the figures (per sample and mean) as JSON')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.out:
        check_writable(str(Path(args.out).parent), 'output folder of --out')
    # Quiet: the random initialisation would log every parameter's initialiser.
    MMLogger.get_instance('diagnose_queries', log_level='WARNING')
    torch.manual_seed(0)  # the same random initial weights every run
    model, cfg = build_detector(args.config, args.checkpoint)
    check_info_files(cfg, ('val', ), evaluators=False)
    loader = Runner.build_dataloader(cfg.val_dataloader)
    every = max(1, len(loader.dataset) // args.samples)
    rows = []
    for i, data in enumerate(loader):
        if i % every == 0:
            rows.append(query_spread(model, model.data_preprocessor(data, False)))
        if len(rows) == args.samples:
            break
    flat = [{k: (v['specificity'] if isinstance(v, dict) else v) for k, v in r.items()}
            for r in rows]
    lift = {k: float(np.mean([r[k]['lift'] for r in rows])) for k in rows[0] if 'cross' in k}
    entropy = {k: (np.mean([r[k]['entropy'] for r in rows]), v['uniform_entropy'])
               for k, v in rows[0].items() if isinstance(v, dict)}
    mean = {k: float(np.mean([f[k] for f in flat])) for k in flat[0]}
    print(f'{args.checkpoint or "random initial weights"}: {len(rows)} val samples')
    print(f"query_pos relative spread {mean['query_pos']:.4f}")
    for k, (ent, uniform) in entropy.items():
        print(f'{k:22s} entropy {ent:.3f} (uniform {uniform:.3f}), query specificity '
              f'{mean[k]:.4f}' + (f', geometric lift {lift[k]:.3f}' if k in lift else ''))
    print(f"decoder_out relative spread {mean['decoder_out']:.5f}")
    print(f"score_std {mean['score_std']:.5f}")
    if args.out:
        atomic_write_json(args.out, dict(checkpoint=args.checkpoint, samples=rows, mean=mean))
    return 0


if __name__ == '__main__':
    entry(__file__, main)
