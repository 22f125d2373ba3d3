"""Checkpoints that load on torch >= 2.6, are written atomically, and load strictly.

- torch 2.6 made `torch.load(weights_only=True)` the default; mmengine 0.10.7 calls `torch.load`
  without the argument, and its own checkpoints hold numpy scalars and mmengine objects (the
  message hub's history buffers), so every resume fails. The local-file scheme is re-registered to
  load a file the user named as mmengine always did.
- mmengine's local file backend writes in place: a run killed while saving leaves a truncated
  .pth that resuming then fails on. The local backend is re-registered with atomic writes (a
  temporary file beside the target, then a rename), so every file the Runner writes through it
  (checkpoints, `last_checkpoint`) is either the old one or the complete new one.
- `check_loadable` compares a checkpoint with a model before loading it, so that a checkpoint of
  another structure fails by name instead of loading as size-mismatch warnings.
"""
import glob
import os
import os.path as osp
import pickle
from typing import Optional

import torch
from mmengine.fileio.backends import LocalBackend, register_backend
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

from mmdp.fileio import atomic_write

# Shown per kind of mismatch; the rest is counted.
SHOWN_KEYS = 3


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename, map_location):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} can not be found')
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    # truncated, or not a torch file at all
    except (EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        raise ValueError(f'checkpoint {filename} cannot be read ({str(e).splitlines()[0]}): '
                         'it is truncated or not a checkpoint') from None


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, 'wb') as f:
        f.write(data)


class AtomicLocalBackend(LocalBackend):
    """mmengine's local backend whose writes replace the target only once complete."""

    def put(self, obj: bytes, filepath) -> None:
        # What a run killed while writing this file left behind (only rank 0 writes it).
        folder, name = osp.split(osp.abspath(filepath))
        for stale in glob.glob(osp.join(glob.escape(folder), f'.{glob.escape(name)}*.tmp')):
            os.unlink(stale)
        atomic_write(filepath, lambda tmp: _write_bytes(tmp, obj))

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(filepath, lambda tmp: _write_bytes(tmp, obj.encode(encoding)))


register_backend('local', AtomicLocalBackend, force=True, prefixes='')


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights do not fit the model they are loaded into."""


def _fitting_config(checkpoint: str, ckpt: dict) -> Optional[str]:
    """An exported model's own config: the pruned.py that tools/export_pruned.py wrote beside
    its weights (their meta names the source config)."""
    beside = osp.join(osp.dirname(checkpoint), 'pruned.py')
    exported = 'source_config' in (ckpt.get('meta') or {})
    return beside if exported and osp.isfile(beside) else None


def check_loadable(model: torch.nn.Module, checkpoint: str, config: str) -> None:
    """Raise CheckpointMismatchError naming the first missing, unexpected and size-mismatched
    keys unless `checkpoint` holds exactly the parameters and buffers of `model`."""
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    weights = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
    weights = {k[len('module.'):] if k.startswith('module.') else k: v
               for k, v in weights.items()}
    ours = model.state_dict()
    missing = [k for k in ours if k not in weights]
    unexpected = [k for k in weights if k not in ours]
    shapes = [f'{k} {tuple(weights[k].shape)} in the checkpoint, {tuple(v.shape)} in the model'
              for k, v in ours.items()
              if k in weights and hasattr(weights[k], 'shape') and weights[k].shape != v.shape]
    if not (missing or unexpected or shapes):
        return
    lines = [f'checkpoint {checkpoint} does not fit the model of {config}:']
    for what, keys in (('size mismatch', shapes), ('missing in the checkpoint', missing),
                       ('not in the model', unexpected)):
        if keys:
            more = f' (and {len(keys) - SHOWN_KEYS} more)' if len(keys) > SHOWN_KEYS else ''
            lines.append(f'  {len(keys)} {what}: {"; ".join(keys[:SHOWN_KEYS])}{more}')
    fitting = _fitting_config(checkpoint, ckpt)
    if fitting:
        lines.append(f'  it is an exported pruned model: use its own config {fitting}')
    lines.append('  pass --allow-partial-load to load the matching part on purpose (e.g. an '
                 'ImageNet backbone)')
    raise CheckpointMismatchError('\n'.join(lines))


def latest_checkpoint(work_dir: str) -> Optional[str]:
    """The newest complete checkpoint of a work dir, or None. `last_checkpoint` names it; where
    that file is missing, empty (a run killed while writing it) or names a path that no longer
    exists (a moved work dir: mmengine records absolute paths), the file of that name in the
    work dir, else the `iter_N.pth` / `epoch_N.pth` with the largest N."""
    record = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(record):
        with open(record) as f:
            named = f.read().strip()
        for candidate in (named, osp.join(work_dir, osp.basename(named))):
            if named and osp.isfile(candidate):
                return candidate
    numbered = []
    for name in os.listdir(work_dir) if osp.isdir(work_dir) else []:
        stem, ext = osp.splitext(name)
        kind, _, number = stem.partition('_')
        if ext == '.pth' and kind in ('iter', 'epoch') and number.isdigit():
            numbered.append((int(number), osp.join(work_dir, name)))
    return max(numbered)[1] if numbered else None
