"""Config loading shared by the command-line tools: clear errors, checked overrides, and the
training schedule scaled to the number of GPUs."""
import os.path as osp
from typing import Optional

from mmengine.config import Config


# Top-level keys read after the config file was read: by MMEngine's Runner and by mmdp's tools and
# hooks. Any other top-level key is a variable of the file (data_root, max_iters, ...).
READ_KEYS = frozenset({
    'activation_checkpointing', 'auto_scale_lr', 'compile', 'custom_hooks', 'custom_imports',
    'data_preprocessor', 'default_hooks', 'default_scope', 'efficient_conv_bn_eval', 'env_cfg',
    'experiment_name', 'find_unused_parameters', 'launcher', 'load_from', 'log_level',
    'log_processor', 'model', 'model_wrapper_cfg', 'optim_wrapper', 'param_scheduler',
    'randomness', 'resume', 'runner_type', 'sync_bn', 'test_cfg', 'test_dataloader',
    'test_evaluator', 'train_cfg', 'train_dataloader', 'val_cfg', 'val_dataloader',
    'val_evaluator', 'visualizer', 'work_dir',
    'img_size', 'latency_input_shape', 'recipe'})


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


def _nodes(node, prefix=''):
    """(dotted key, value) of every value of a config, containers included."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, (list, tuple)):
        items = enumerate(node)
    else:
        return
    for key, value in items:
        name = f'{prefix}.{key}' if prefix else str(key)
        yield name, value
        yield from _nodes(value, name)


def _uses_of(cfg_dict: dict, key: str) -> list:
    """The keys that hold the value of top-level `key`, or a string built from it: where the
    config interpolated it when it was read."""
    value = cfg_dict[key]
    if value is None or isinstance(value, (bool, dict)):
        return []
    uses = []
    for other, held in _nodes({k: v for k, v in cfg_dict.items() if k != key}):
        if held is None or isinstance(held, (bool, dict)):
            continue
        if held == value or (isinstance(value, str) and len(value) > 1
                             and isinstance(held, str) and value in held):
            uses.append(other)
    return uses


def _check_interpolated(cfg_dict: dict, key: str) -> None:
    """A top-level key must be one something reads, and its value must not have been copied
    into other keys already."""
    if '.' in key or key not in cfg_dict:
        return
    uses = _uses_of(cfg_dict, key)
    if uses:
        raise ConfigError(
            f"--cfg-options key '{key}': the config copied its value {cfg_dict[key]!r} into "
            f'other keys when it was read, so setting it changes nothing; set those instead: '
            f"{', '.join(uses)}")
    if key not in READ_KEYS:
        raise ConfigError(
            f"--cfg-options key '{key}': a variable of the config file that nothing reads "
            'after the file was read (its value is not used by any other key either), so '
            'setting it changes nothing; set the keys that use it instead')


def _check_type(cfg_dict: dict, key: str, new) -> None:
    """A number or flag the config holds must stay one (`train_cfg.max_iters=abc` fails here,
    not deep in the training loop)."""
    node = cfg_dict
    for part in key.split('.'):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return  # a new argument of a typed dict: the class checks it
    old = node
    if new is None or not isinstance(old, (bool, int, float)):
        return
    wanted = (bool,) if isinstance(old, bool) else (int,) if isinstance(old, int) else (int, float)
    if not isinstance(new, wanted) or (isinstance(new, bool) and wanted != (bool,)):
        name = {(bool,): 'true/false', (int,): 'an integer'}.get(wanted, 'a number')
        raise ConfigError(f"--cfg-options {key}={new!r}: {key} must be {name} "
                          f'(the config has {old!r})')


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config file; every override must name a key that exists (a typo would otherwise
    add a key nobody reads), or an argument of a dict with a `type` (the built class checks it),
    keep the type of a number or flag, and not be a top-level variable the config already copied
    into other keys (`data_root`, `max_iters`: changing it would change nothing)."""
    if not osp.isfile(path):
        raise ConfigError(f'config file {path} does not exist')
    try:
        cfg = Config.fromfile(path)
    except (SyntaxError, NameError, KeyError, TypeError) as e:
        raise ConfigError(f'config file {path} cannot be read: {type(e).__name__}: {e}') from None
    cfg_dict = cfg.to_dict()
    for key, value in (cfg_options or {}).items():
        _check_key(cfg, key)
        _check_interpolated(cfg_dict, key)
        _check_type(cfg_dict, key, value)
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


def _info_files(cfg: Config, splits, evaluators: bool) -> list:
    """(config key, path) of the info files the datasets and evaluators of `splits` read."""
    found = []
    for split in splits:
        loader = cfg.get(f'{split}_dataloader') or {}
        dataset = loader.get('dataset') or {}
        while 'dataset' in dataset:  # wrappers (RepeatDataset, ...)
            dataset = dataset['dataset']
        ann, root = dataset.get('ann_file'), dataset.get('data_root') or ''
        if ann:
            found.append((f'{split}_dataloader.dataset.ann_file',
                          ann if osp.isabs(ann) else osp.join(root, ann)))
        evaluator = (cfg.get(f'{split}_evaluator') or {}) if evaluators else {}
        if isinstance(evaluator, dict) and evaluator.get('ann_file'):
            found.append((f'{split}_evaluator.ann_file', evaluator['ann_file']))
    return found


def check_info_files(cfg: Config, splits, evaluators: bool = True) -> None:
    """Every info file the run will read exists and is a complete pickle (it starts with the
    protocol marker and ends with the STOP opcode; a file cut short by an interrupted
    tools/create_data.py ends elsewhere): a bad one fails now, by name, not at the first batch."""
    for key, path in _info_files(cfg, splits, evaluators):
        if not osp.isfile(path):
            raise ConfigError(f'{key}: {path} does not exist; make it with tools/create_data.py '
                              'or point the key at it')
        size = osp.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(1)
            f.seek(max(size - 1, 0))
            tail = f.read(1)
        if head != b'\x80' or tail != b'.':
            raise ConfigError(f'{key}: {path} is truncated or not a pickle; make it again with '
                              'tools/create_data.py')


def set_cpu_distributed(cfg) -> None:
    """Distributed training or testing without CUDA (gloo): mmengine's init_dist calls
    torch.cuda.set_device and its DDP wrapper passes device_ids, which a CPU module refuses."""
    import torch

    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.launcher != 'pytorch':
        raise ConfigError(f'--launcher {cfg.launcher} without CUDA: only --launcher pytorch '
                          '(tools/dist_train.sh, tools/dist_test.sh) runs on CPUs')
    cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    if not torch.distributed.is_initialized():  # the Runner then skips its own set-up
        torch.distributed.init_process_group('gloo')
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = dict(wrapper, device_ids=None)
