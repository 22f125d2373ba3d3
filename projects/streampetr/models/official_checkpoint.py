"""Key mapping from the official StreamPETR checkpoints (exiawsh/StreamPETR, mmdet3d 0.17) to this
port. Only names change, plus the split of each attention's packed q/k/v projection; every
weight keeps its values and layout (docs/official-checkpoint.md lists the mapping)."""
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

# Official head constants stored as frozen nn.Parameters; here they come from the config, so the
# converter checks that they agree with it and drops them.
OFFICIAL_CONSTANTS = {
    'pts_bbox_head.code_weights': 'pts_bbox_head.code_weights',
    # The official matching costs equal its code weights.
    'pts_bbox_head.match_costs': 'pts_bbox_head.code_weights',
    'pts_bbox_head.pc_range': 'pts_bbox_head.pc_range',
    'pts_bbox_head.position_range': 'pts_bbox_head.position_range',
    'pts_bbox_head.coords_d': 'pts_bbox_head.coords_d',
}

# The official converter labels 2D boxes by this tuple's order (tools/data_converter/
# nuscenes_converter.py: category_id = nus_categories.index(name)), not by the config's classes,
# so the 2D head's class channels are permuted into the config's order.
OFFICIAL_2D_CLASSES = ('car', 'truck', 'trailer', 'bus', 'construction_vehicle', 'bicycle',
                       'motorcycle', 'pedestrian', 'traffic_cone', 'barrier')
_2D_CLASS_KEYS = ('img_roi_head.cls.weight', 'img_roi_head.cls.bias')

_LAYER = r'^pts_bbox_head\.decoder\.layers\.(\d+)\.'
_OFFICIAL_LAYER = 'pts_bbox_head.transformer.decoder.layers.{}.'
_ATTN_INDEX = {'self': 0, 'cross': 1}  # official operation order: self_attn, ..., cross_attn


class OfficialCheckpointError(ValueError):
    """The state dict is not one of the official StreamPETR model this config describes."""


def official_source(port_key: str) -> Tuple[str, Optional[int]]:
    """The official key a port key's tensor comes from and, for q/k/v projections, which third
    (0, 1, 2) of the packed in_proj it is."""
    m = re.match(_LAYER + r'(self|cross)_attn\.([qkv])_proj\.(weight|bias)$', port_key)
    if m:
        layer, kind, part, what = m.groups()
        return (_OFFICIAL_LAYER.format(layer) + f'attentions.{_ATTN_INDEX[kind]}.attn.'
                f'in_proj_{what}', 'qkv'.index(part))
    m = re.match(_LAYER + r'(self|cross)_attn\.out_proj\.(weight|bias)$', port_key)
    if m:
        layer, kind, what = m.groups()
        return (_OFFICIAL_LAYER.format(layer) +
                f'attentions.{_ATTN_INDEX[kind]}.attn.out_proj.{what}', None)
    m = re.match(_LAYER + r'ffn\.(0|3)\.(weight|bias)$', port_key)
    if m:
        layer, idx, what = m.groups()
        inner = 'layers.0.0' if idx == '0' else 'layers.1'
        return _OFFICIAL_LAYER.format(layer) + f'ffns.0.{inner}.{what}', None
    m = re.match(_LAYER + r'(norms\.\d+\.(weight|bias))$', port_key)
    if m:
        return _OFFICIAL_LAYER.format(m.group(1)) + m.group(2), None
    if port_key.startswith('pts_bbox_head.decoder.post_norm.'):
        return port_key.replace('.decoder.', '.transformer.decoder.'), None
    m = re.match(r'^pts_bbox_head\.featurized_pe\.(reduce|expand)\.(weight|bias)$', port_key)
    if m:
        return f'pts_bbox_head.featurized_pe.conv_{m.group(1)}.{m.group(2)}', None
    return port_key, None  # backbone, neck, 2D head and the rest of the 3D head


def _names(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f' ... (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def convert_state_dict(official: Dict[str, torch.Tensor], model: torch.nn.Module,
                       class_names: Sequence[str]) -> Dict[str, torch.Tensor]:
    """official: the official model's state dict; model: the port model built from the config
    the weights are for; class_names: that config's classes, in order. Returns the port state
    dict; raises OfficialCheckpointError naming what is missing, unexpected, of another shape or
    disagrees with the config."""
    target = model.state_dict(keep_vars=True)  # keep_vars: shared tensors keep one identity
    sources = {k: official_source(k) for k in target}
    needed = {src for src, _ in sources.values()}
    missing = needed - official.keys()
    unexpected = official.keys() - needed - OFFICIAL_CONSTANTS.keys()
    problems: List[str] = []
    if missing:
        problems.append(f'{len(missing)} missing keys: {_names(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected keys: {_names(unexpected)}')
    if problems:
        raise OfficialCheckpointError('; '.join(problems))

    out = {}
    for key, (src, part) in sources.items():
        value = official[src]
        if part is not None:
            value = value.chunk(3)[part]
        if tuple(value.shape) != tuple(target[key].shape):
            problems.append(f'{src}{"" if part is None else f"[{part}/3]"} has shape '
                            f'{tuple(value.shape)}, the config wants {tuple(target[key].shape)}')
        out[key] = value.clone()
    problems += _permute_2d_classes(out, class_names)
    for off_key, port_key in OFFICIAL_CONSTANTS.items():
        ours = model.get_buffer(port_key)
        if off_key in official and not _same(official[off_key], ours):
            problems.append(f'{off_key} is {official[off_key].tolist()}, the config has '
                            f'{ours.tolist()}')
    problems += _shared_disagreements(out, target)
    if problems:
        raise OfficialCheckpointError('; '.join(problems[:8]))
    return out


def _permute_2d_classes(out, class_names) -> List[str]:
    unknown = [c for c in class_names if c not in OFFICIAL_2D_CLASSES]
    if unknown:
        return [f'classes {unknown} have no channel in the official 2D head '
                f'(it knows {list(OFFICIAL_2D_CLASSES)})']
    order = torch.tensor([OFFICIAL_2D_CLASSES.index(c) for c in class_names])
    for key in _2D_CLASS_KEYS:
        if key in out and out[key].shape[0] == len(OFFICIAL_2D_CLASSES):
            out[key] = out[key][order].clone()
    return []


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.double().cpu(), b.double().cpu(), rtol=1e-6,
                                                 atol=1e-6)


def _shared_disagreements(out, target) -> List[str]:
    """Keys the port stores in one tensor (the class and box branches all layers share) must
    carry equal values, as they do in the official checkpoints."""
    first: Dict[int, str] = {}
    problems = []
    for key, tensor in target.items():
        owner = first.setdefault(id(tensor), key)
        if owner != key and not torch.equal(out[owner], out[key]):
            problems.append(f'{key} differs from {owner}: this model shares one branch across '
                            'decoder layers')
    return problems
