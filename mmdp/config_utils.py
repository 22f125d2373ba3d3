"""Config loading shared by the command-line tools: clear errors, checked overrides, and the
training schedule scaled to the number of GPUs."""
import os.path as osp
from typing import Optional

from mmengine.config import Config


class ConfigError(ValueError):
    """A config file or override that cannot be used, with the reason."""


def _check_key(cfg, full_key: str):
    node, walked = cfg.to_dict(), []
    for part in full_key.split('.'):
        if isinstance(node, (list, tuple)) and part.isdigit():
            if int(part) >= len(node):
                raise ConfigError(f"--cfg-options key '{full_key}': index {part} is out of range "
                                  f"for '{'.'.join(walked)}' (length {len(node)})")
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and 'type' in node and part == full_key.split('.')[-1]:
            # An argument of a registered class the config leaves at its default: the class
            # itself rejects, by name, one it does not take.
            return
        else:
            where = '.'.join(walked) or 'the top level'
            allowed = sorted(node.keys()) if isinstance(node, dict) else []
            raise ConfigError(f"--cfg-options key '{full_key}' does not exist in the config: "
                              f"'{part}' is not a key of {where}; keys there: {allowed}")
        walked.append(part)


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config file; every override must name a key that exists (a typo would otherwise
    add a key nobody reads), or an argument of a dict with a `type` (the built class checks it)."""
    if not osp.isfile(path):
        raise ConfigError(f'config file {path} does not exist')
    cfg = Config.fromfile(path)
    for key in cfg_options or {}:
        _check_key(cfg, key)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def scale_schedule(cfg: Config, world_size: int) -> None:
    """Turn `recipe` (epochs over a dataset at a per-GPU batch) into iterations for this many
    GPUs: the iteration count and the cosine schedule follow; the learning rate follows through
    MMEngine's `auto_scale_lr`."""
    recipe = cfg.get('recipe')
    if not recipe:
        return
    batch = cfg.train_dataloader.batch_size * world_size
    # Whole iterations per epoch, then epochs, as StreamPETR counts them (28130 // 16 x 60).
    iters = max(1, recipe['epochs'] * (recipe['samples_per_epoch'] // batch))
    cfg.train_cfg.max_iters = iters
    for sched in cfg.get('param_scheduler', []):
        if sched.get('type') == 'CosineAnnealingLR':
            sched['T_max'] = iters
            sched['end'] = iters
