"""Prunable dimensions of the StreamPETR head and the neck's convs, as parts of a `Structure`.

A part is a piece of computation whose cost and value follow one width choice: the hidden width
of an MLP (the position encoder over every image token, each decoder layer's FFN), the number of
heads of an attention (head width fixed, q/k/v rows and out_proj columns sliced per head), or a
neck conv whose input width is a backbone group. Each part's units form a group of
`Structure.groups` like a conv's channels, and a decoder layer is a removable `Block` of kind
'decoder_layer' (removed, it passes its query on). Shapes are the real ones: recorded by forward
hooks during one inference frame at the structure's input size.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

MLP, ATTENTION, NECK_CONV = 'mlp', 'attention', 'neck_conv'
DECODER_LAYER = 'decoder_layer'


@dataclass(frozen=True)
class Part:
    """`modules`: mlp (in Linear, out Linear); attention (q, k, v, out); neck_conv (conv,).
    `unit`: features per unit (a head's width; 1 for MLP units). `gate`: the module whose
    input carries the units (the multiplicative gate of the Taylor importance sits there), or
    None when the part has no units of its own (a neck conv: cost only). `shapes`: the real
    input shapes of `modules[0]` (and of the key projection for attention)."""
    name: str
    kind: str
    group: str
    block: Optional[str]
    modules: tuple
    units: int
    unit: int
    gate: Optional[str]
    shapes: tuple
    bias: bool = True  # whether its Linears have biases
    out_features: int = 0  # the width it returns (embed dims; a neck conv's output channels)
    # The group whose choice multiplies its cost besides its own (a token count; none yet):
    # with it the part's latency is a table over (own width, input_group width), as a conv's.
    input_group: Optional[str] = None


def _attention_parts(layer_path: str, layer: nn.Module, block: str) -> list:
    parts = []
    for attr in ('self_attn', 'cross_attn'):
        attn = getattr(layer, attr)
        path = f'{layer_path}.{attr}'
        mods = tuple(f'{path}.{m}' for m in ('q_proj', 'k_proj', 'v_proj', 'out_proj'))
        head = attn.q_proj.out_features // attn.num_heads
        parts.append(Part(path, ATTENTION, f'{path}.heads', block, mods, attn.num_heads, head,
                          mods[3], (), attn.q_proj.bias is not None, attn.out_proj.out_features))
    return parts


def head_parts(model: nn.Module, head: str = 'pts_bbox_head') -> tuple:
    """(groups, parts, blocks) of the head at `head` ('' when `model` is the head itself;
    shapes not yet recorded)."""
    from .derive import Block
    net = model.get_submodule(head)
    p = f'{head}.' if head else ''
    groups, parts, blocks = {}, [], []
    pe = net.position_encoder
    parts.append(Part(f'{p}position_encoder', MLP, f'{p}position_encoder.hidden', None,
                      (f'{p}position_encoder.0', f'{p}position_encoder.2'),
                      pe[0].out_features, 1, f'{p}position_encoder.2', (),
                      pe[0].bias is not None, pe[2].out_features))
    for i, layer in enumerate(net.decoder.layers):
        path = f'{p}decoder.layers.{i}'
        blocks.append(Block(path, (), (), DECODER_LAYER))
        parts.append(Part(f'{path}.ffn', MLP, f'{path}.ffn.hidden', path,
                          (f'{path}.ffn.0', f'{path}.ffn.3'), layer.ffn[0].out_features, 1,
                          f'{path}.ffn.3', (), layer.ffn[0].bias is not None,
                          layer.ffn[3].out_features))
        parts += _attention_parts(path, layer, path)
    for part in parts:
        groups[part.group] = part.units
    return groups, parts, blocks


def neck_parts(consumers: list, model: nn.Module) -> list:
    """The neck's lateral convs as cost-only parts of the backbone group they read."""
    from .derive import UnsupportedStructureError
    parts = []
    for c in consumers:
        conv = model.get_submodule(c.name)
        if tuple(conv.kernel_size) != (1, 1) or tuple(conv.stride) != (1, 1):
            raise UnsupportedStructureError(f'{c.name}: only 1x1 lateral convs are timed')
        parts.append(Part(c.name, NECK_CONV, c.group, None, (c.name,), c.in_channels, 1, None,
                          (c.input_shape,), conv.bias is not None, conv.out_channels))
    return parts


def record_part_shapes(model: nn.Module, parts: list, input_shape) -> list:
    """`parts` with the real input shapes of their first module (and the key projection of an
    attention) during one inference frame of `input_shape` (N views, C, H, W)."""
    from projects.streampetr.fake_inputs import NUM_VIEWS, fake_frame
    if input_shape[0] != NUM_VIEWS:
        raise ValueError(f'the head is probed with {NUM_VIEWS} views; input_shape has '
                         f'{input_shape[0]}')
    wanted = {}
    for part in parts:
        if part.kind == MLP:
            wanted[part.modules[0]] = None
        elif part.kind == ATTENTION:
            wanted[part.modules[0]] = wanted[part.modules[1]] = None
    shapes, handles = {}, []

    def recorder(path):
        def record(module, args):
            shapes.setdefault(path, tuple(args[0].shape))
        return record
    for path in wanted:
        handles.append(model.get_submodule(path).register_forward_pre_hook(recorder(path)))
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        model.reset_memory()
        with torch.no_grad():
            data = model.data_preprocessor(fake_frame(*input_shape[2:]), False)
            model._forward(data['inputs'], data['data_samples'])
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
        model.reset_memory()
    out = []
    for part in parts:
        if part.kind == MLP:
            part = _replace(part, shapes=(shapes[part.modules[0]], ))
        elif part.kind == ATTENTION:
            part = _replace(part, shapes=(shapes[part.modules[0]], shapes[part.modules[1]]))
        out.append(part)
    return out


def _replace(part: Part, **changes) -> Part:
    return Part(**{**vars(part), **changes})


def tokens(shape: tuple) -> int:
    """Rows a Linear processes for an input of `shape` (..., features)."""
    n = 1
    for s in shape[:-1]:
        n *= int(s)
    return n
