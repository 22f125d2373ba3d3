"""Turn a checkpoint of a pruning run (masked, dense-shaped) into a physically smaller model: a
config that inherits the training config with a `PrunedResNet` backbone, and its weights."""
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint
from mmengine.utils import import_modules_from_strings

import mmdp.checkpoint_compat  # noqa: F401  (mmengine checkpoints load on torch >= 2.6)
from mmdp.config_utils import load_config
from mmdp.fileio import atomic_write, atomic_write_text
from mmdp.pruning import CHECKPOINT_KEY, PruningMasks, PruningState
from mmdp.structure import derive_structure, prune_copy

from .pruned_resnet import PROBE_SHAPE

PRUNING_HOOKS = ('SaliencyHook', 'PruningHook', 'JointPruningHook', 'TorchPruningHook')
EXPORT_IMPORT = 'mmdp.export'


def _build_model(cfg):
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    from mmdet3d.registry import MODELS
    return MODELS.build(cfg.model)


def _check_masked(model, structure, choice, checkpoint: str) -> None:
    """The checkpoint's weights must be zero wherever the pruning state prunes."""
    masks = PruningMasks(structure, choice)
    for name, mask in masks.masks.items():
        param = model.get_parameter(name)
        if torch.count_nonzero(param[~mask.expand_as(param)]):
            raise ValueError(f'{checkpoint}: {name} is not zero on the channels its pruning '
                             'state prunes; the checkpoint was not written by a run with the '
                             'pruning hooks')


def _pruned_head(head: str, structure, choice) -> dict:
    """The `PrunedStreamPETRHead` settings of `choice` (names relative to the head)."""
    prefix = head + '.'
    groups = {p.group for p in structure.valued_parts}
    widths = {g[len(prefix):]: w for g, w in choice.all_widths(structure).items()
              if g in groups and w != structure.groups[g]}
    removed = [b[len(prefix):] for b in structure.block_names
               if b in choice.removed_blocks and b.startswith(prefix)]
    return dict(type='PrunedStreamPETRHead', widths=widths, removed_layers=removed)


def _pruned_config_text(config: str, cfg, structure, choice, weights: str,
                        checkpoint: str) -> str:
    """`config` with the backbone at `structure.backbone` replaced by a `PrunedResNet` of
    `choice`, the neck's inputs narrowed alike and the pruning hooks dropped."""
    if not structure.backbone:
        raise ValueError('export needs a detector config whose backbone is a module of the model')
    prefix = structure.backbone + '.'
    widths = {g[len(prefix):]: w for g, w in choice.all_widths(structure).items()
              if w != structure.groups[g] and g.startswith(prefix)}
    removed = [b[len(prefix):] for b in structure.block_names
               if b in choice.removed_blocks and b.startswith(prefix)]
    imports = list(cfg.get('custom_imports', {}).get('imports', []))
    hooks = [h for h in cfg.to_dict().get('custom_hooks', []) if h.get('type') not in PRUNING_HOOKS]
    backbone = dict(type='PrunedResNet', init_cfg=None, widths=widths, removed_blocks=removed)
    model = {structure.backbone: backbone}
    if structure.parts:
        model[cfg.prunable_head] = _pruned_head(cfg.prunable_head, structure, choice)
    if structure.consumers:
        neck = structure.consumers[0].name.split('.')[0]
        neck_inputs = cfg.model[neck].in_channels
        if len(neck_inputs) != len(structure.outputs):
            raise ValueError(f'{neck} reads {len(neck_inputs)} inputs {neck_inputs}, the '
                             f'backbone gives {len(structure.outputs)}: cannot narrow them')
        model[neck] = dict(in_channels=[choice.width(structure, g) for g in structure.outputs])
    out = Config(cfg.to_dict())  # the training config as read, overrides included
    out.merge_from_dict({
        'custom_imports': dict(imports=imports + [EXPORT_IMPORT] * (EXPORT_IMPORT not in imports),
                               allow_failed_imports=False),
        'model': model,
    })
    out.custom_hooks = hooks
    # Resolved when the file is read: the export folder can move with its weights.
    out.load_from = '{{ fileDirname }}/' + osp.basename(weights)
    out.resume = False
    header = [f'# Written by tools/export_pruned.py from {osp.basename(checkpoint)} of '
              f'{osp.basename(config)}:',
              '# the training config (all of it: nothing here refers to other files) with its',
              '# backbone (and head) physically pruned.', '']
    return '\n'.join(header) + out.pretty_text + '\n'


def export_pruned(config: str, checkpoint: str, out_dir: str,
                  cfg_options: Optional[dict] = None) -> tuple:
    """Write `out_dir/pruned.py` and `out_dir/pruned.pth`; returns their paths."""
    cfg = load_config(config, cfg_options)
    model = _build_model(cfg)
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    if CHECKPOINT_KEY not in ckpt:
        raise ValueError(f'{checkpoint} holds no pruning state: export a checkpoint written by '
                         'a run with the pruning hooks (PruningHook) after its first pruning event')
    state = PruningState.from_dict(ckpt[CHECKPOINT_KEY])
    if not state.pruned:
        raise ValueError(f'{checkpoint} was written before the first pruning event: nothing is '
                         'pruned yet')
    model.load_state_dict(ckpt['state_dict'], strict=True)
    model.eval()
    # A whole-detector run (`prunable_head`) probes its head with the six views it expects.
    head = cfg.get('prunable_head')
    structure = derive_structure(model, (6, *PROBE_SHAPE[1:]) if head else PROBE_SHAPE,
                                 head=head)
    choice = state.choice()
    choice.check(structure)
    _check_masked(model, structure, choice, checkpoint)
    pruned = prune_copy(model, structure, choice)

    os.makedirs(out_dir, exist_ok=True)
    weights, config_out = osp.join(out_dir, 'pruned.pth'), osp.join(out_dir, 'pruned.py')
    text = _pruned_config_text(config, cfg, structure, choice, weights, checkpoint)
    meta = {'source_config': osp.abspath(config), 'source_checkpoint': osp.abspath(checkpoint),
            'iter': ckpt.get('meta', {}).get('iter'), CHECKPOINT_KEY: state.to_dict()}
    # The weights first: a config is never left pointing at weights that are not there.
    atomic_write(weights, lambda tmp: torch.save(
        {'meta': meta, 'state_dict': pruned.state_dict()}, tmp))
    atomic_write_text(config_out, text)
    return config_out, weights
