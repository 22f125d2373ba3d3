"""Prunable dimensions of the StreamPETR head and the neck's convs, as parts of a `Structure`.

A part is a piece of computation whose cost and value follow one width choice: the hidden width
of an MLP (the position encoder over every image token, each decoder layer's FFN), the number of
heads of an attention (head width fixed, q/k/v rows and out_proj columns sliced per head), or a
neck conv whose input width is a backbone group. Each part's units form a group of
`Structure.groups` like a conv's channels, and a decoder layer is a removable `Block` of kind
'decoder_layer' (removed, it passes its query on). Shapes are the real ones: recorded by forward
hooks during one inference frame at the structure's input size.

With the head's `token_settings`, the token counts are one more part, 'tokens': its group
chooses one setting (num_query, num_propagated, memory_len) among the allowed ones, its width
being the setting's number of learnable queries (the settings have distinct ones), and every
decoder part names that group as its `input_group`, so that its cost is a table over (its own
width, the token setting), as a conv's is over (output, input) widths. Its units are the
learnable queries (ranked by importance, the top `num_query` kept) followed by the memory
slots (kept by position: propagated ones first, then the older ones; see
mmdp/importance/scores.py).
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

MLP, ATTENTION, NECK_CONV, TOKENS = 'mlp', 'attention', 'neck_conv', 'tokens'
# Row counts a token-following shape has at a setting (num_query, num_propagated, memory_len):
# the decoder's queries, and self-attention's keys (the queries and the memory).
ROWS = {'queries': lambda q, p, m: q + p, 'keys': lambda q, p, m: q + m}
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
    # The group whose choice multiplies its cost besides its own (the token setting): with it
    # the part's latency is a table over (own width, input_group width), as a conv's.
    input_group: Optional[str] = None
    # Per shape, the ROWS key its row count (dim -2) follows, or None (fixed).
    token_axes: tuple = ()
    # The token part's allowed (num_query, num_propagated, memory_len), ascending, dense last.
    settings: tuple = ()


def _attention_parts(layer_path: str, layer: nn.Module, block: str,
                     tokens: Optional[str]) -> list:
    parts = []
    for attr, axes in (('self_attn', ('queries', 'keys')), ('cross_attn', ('queries', None))):
        attn = getattr(layer, attr)
        path = f'{layer_path}.{attr}'
        mods = tuple(f'{path}.{m}' for m in ('q_proj', 'k_proj', 'v_proj', 'out_proj'))
        head = attn.q_proj.out_features // attn.num_heads
        parts.append(Part(path, ATTENTION, f'{path}.heads', block, mods, attn.num_heads, head,
                          mods[3], (), attn.q_proj.bias is not None, attn.out_proj.out_features,
                          tokens, axes if tokens else ()))
    return parts


def _token_part(net: nn.Module, head: str, p: str) -> Part:
    """The token setting of a head with `token_settings`: units are its learnable queries, then
    its memory slots; the gate reads the decoder's inputs."""
    settings = tuple(tuple(s) for s in net.token_settings)
    num_query, _, memory_len = settings[-1]
    return Part(f'{p}tokens', TOKENS, f'{p}tokens', None,
                (head, f'{p}reference_points', f'{p}query_embedding.0', f'{p}cls_branches.0.0'),
                num_query + memory_len, 1, f'{p}decoder', (), True, net.num_classes, None,
                ('keys', 'queries'), settings)


def token_part(structure, group: str) -> Part:
    """The token part whose group is `group`."""
    found = [p for p in structure.parts if p.kind == TOKENS and p.group == group]
    if not found:
        raise KeyError(f'no token part has group {group!r}')
    return found[0]


def token_setting(part: Part, width: int) -> tuple:
    """(num_query, num_propagated, memory_len) of the setting with `width` learnable queries."""
    for setting in part.settings:
        if setting[0] == width:
            return tuple(setting)
    raise ValueError(f'{part.group}: no token setting has {width} learnable queries (allowed: '
                     f'{[s[0] for s in part.settings]})')


def at_setting(part: Part, setting) -> Part:
    """`part` with its token-following shapes at `setting` (num_query, num_propagated,
    memory_len): what it processes when the head runs with those counts."""
    shapes = list(part.shapes)
    for i, axis in enumerate(part.token_axes):
        if axis is not None:
            shapes[i] = (*shapes[i][:-2], ROWS[axis](*setting), shapes[i][-1])
    return _replace(part, shapes=tuple(shapes))


def head_parts(model: nn.Module, head: str = 'pts_bbox_head') -> tuple:
    """(groups, parts, blocks) of the head at `head` ('' when `model` is the head itself;
    shapes not yet recorded)."""
    from .derive import Block
    net = model.get_submodule(head)
    p = f'{head}.' if head else ''
    groups, parts, blocks = {}, [], []
    tokens = f'{p}tokens' if getattr(net, 'token_settings', None) else None
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
                          layer.ffn[3].out_features, tokens, ('queries',) if tokens else ()))
        parts += _attention_parts(path, layer, path, tokens)
    for part in parts:
        groups[part.group] = part.units
    if tokens:
        parts.append(_token_part(net, head, p))
        groups[tokens] = parts[-1].settings[-1][0]  # its width counts the learnable queries
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
        elif part.kind == TOKENS:
            wanted[part.modules[2]] = wanted[part.modules[3]] = None
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
        elif part.kind == TOKENS:
            # The query embedding runs over the learnable queries and (a second call) the
            # memory: timed as one call over both, the 'keys' rows.
            part = at_setting(_replace(part, shapes=(shapes[part.modules[2]],
                                                     shapes[part.modules[3]])),
                              part.settings[-1])
        out.append(part)
    # Recorded at the head's counts of the moment; the tables start from the dense setting.
    dense = {p.group: p.settings[-1] for p in out if p.kind == TOKENS}
    return [at_setting(p, dense[p.input_group]) if p.input_group in dense else p for p in out]


def _replace(part: Part, **changes) -> Part:
    return Part(**{**vars(part), **changes})


def tokens(shape: tuple) -> int:
    """Rows a Linear processes for an input of `shape` (..., features)."""
    n = 1
    for s in shape[:-1]:
        n *= int(s)
    return n
