"""Derive the prunable structure of a built backbone: channel groups coupled by residual adds,
prunable convs with their real input shapes, removable residual blocks and the neck convs that
read the backbone's outputs.

The coupling comes from a torch.fx trace of the backbone: every conv starts a new channel group,
channel-wise ops (BN, ReLU, pooling) pass their input's group on, and a residual add merges the
groups of its operands (union-find). Shapes come from forward hooks on a dummy input.
"""
import operator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from scipy.cluster.hierarchy import DisjointSet
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .head import Part, head_parts, neck_parts, record_part_shapes


class UnsupportedStructureError(ValueError):
    """A module or operation the structure derivation does not know how to prune."""


# Modules and functions that keep the channels of their input one to one.
_CHANNELWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AvgPool2d, nn.Identity)
_CHANNELWISE_FUNCTIONS = (F.relu, torch.relu)
_CHANNELWISE_METHODS = ('relu', 'relu_')
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ('add', 'add_')


@dataclass(frozen=True)
class ConvLayer:
    """A prunable conv; names are module paths in the model the structure was derived from."""
    name: str
    group: str  # sets its output channels
    input_group: Optional[str]  # sets its input channels; None when it reads the image
    bn: str  # the BatchNorm right after it
    block: Optional[str]  # the removable block it goes away with, or None
    in_channels: int
    out_channels: int
    kernel_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    bias: bool
    input_shape: tuple  # (N, C, H, W) of its real input
    output_shape: tuple


@dataclass(frozen=True)
class Block:
    """A removable residual block. Removed, it becomes `relu(shortcut(x))`, or `x` when it has no
    shortcut modules (its input is already the output of a ReLU)."""
    name: str
    layers: tuple  # the convs removed with it
    shortcut: tuple  # module paths of its projection (conv, BN), kept when it is removed
    kind: str = 'residual'  # or 'decoder_layer' (head.py): removed, it passes its query on


@dataclass(frozen=True)
class Consumer:
    """A conv outside the backbone whose input channels follow a group (a neck's lateral conv)."""
    name: str
    group: str
    in_channels: int
    input_shape: tuple


@dataclass
class Structure:
    """What can be pruned in a backbone and how its channels couple."""
    backbone: str  # module path of the backbone in the model ('' when the model is the backbone)
    input_shape: tuple  # the dummy input the shapes were recorded at
    groups: dict  # group name -> full channel count
    layers: list  # ConvLayer, in execution order
    blocks: list  # Block, in execution order
    consumers: list = field(default_factory=list)  # Consumer
    outputs: list = field(default_factory=list)  # group of each backbone output
    parts: list = field(default_factory=list)  # head.Part: head dimensions and neck convs

    def layer(self, name: str) -> ConvLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f'no prunable layer named {name!r}')

    @property
    def block_names(self) -> list:
        return [block.name for block in self.blocks]

    @property
    def fixed_groups(self) -> list:
        """Groups that keep their full width: the stem's, the group of the conv that reads the
        image (official MDP keeps the first conv whole, latency_targeted_pruning_mdp.py:748;
        HALP gives it a score that no other channel reaches)."""
        return list(dict.fromkeys(layer.group for layer in self.layers
                                  if layer.input_group is None))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> 'Structure':
        def deep(v):
            return tuple(deep(x) for x in v) if isinstance(v, list) else v

        def tuples(item: dict) -> dict:
            return {k: deep(v) for k, v in item.items()}
        return cls(backbone=data['backbone'], input_shape=tuple(data['input_shape']),
                   groups=dict(data['groups']),
                   layers=[ConvLayer(**tuples(x)) for x in data['layers']],
                   blocks=[Block(**tuples(x)) for x in data['blocks']],
                   consumers=[Consumer(**tuples(x)) for x in data['consumers']],
                   outputs=list(data['outputs']),
                   parts=[Part(**tuples(x)) for x in data.get('parts', [])])

    def part(self, name: str) -> Part:
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(f'no part named {name!r}')

    @property
    def valued_parts(self) -> list:
        """Parts whose units carry importance (the head's dimensions)."""
        return [p for p in self.parts if p.gate is not None]


def _find_backbone(model: nn.Module, backbone: Optional[str]) -> str:
    if backbone is not None:
        return backbone
    return 'img_backbone' if hasattr(model, 'img_backbone') else ''


def _find_neck(model: nn.Module, neck: Optional[str], backbone: str) -> str:
    if neck is not None:
        return neck
    return 'img_neck' if backbone and getattr(model, 'img_neck', None) is not None else ''


@contextmanager
def _without_checkpointing(module: nn.Module):
    """fx cannot trace `if self.with_cp and x.requires_grad`; checkpointing does not change the
    data flow, so it is switched off while tracing."""
    switched = [m for m in module.modules() if getattr(m, 'with_cp', False) is True]
    for m in switched:
        m.with_cp = False
    try:
        yield
    finally:
        for m in switched:
            m.with_cp = True


@contextmanager
def _eval_mode(module: nn.Module):
    """Run the dummy forward without touching BN running stats; restore every module's flag."""
    flags = {m: m.training for m in module.modules()}
    for m in flags:
        m.training = False
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def _innermost_module(node: fx.Node) -> Optional[str]:
    stack = node.meta.get('nn_module_stack') or {}
    return next(reversed(stack.values()))[0] if stack else None


def _inside(node: fx.Node, block: str) -> bool:
    stack = node.meta.get('nn_module_stack') or {}
    return any(path == block for path, _ in stack.values())


def _tensor_args(node: fx.Node) -> list:
    return [a for a in node.args if isinstance(a, fx.Node)]


class _GraphAnalysis:
    """Walk an fx graph of the backbone once: channel sources, conv/BN pairs, residual adds."""

    def __init__(self, backbone: nn.Module, prefix: str):
        with _without_checkpointing(backbone):
            self.graph = fx.symbolic_trace(backbone).graph
        self.modules = dict(backbone.named_modules())
        self.prefix = prefix
        self.source = {}  # node -> conv path whose output channels it carries, None: the image
        self.convs = []  # conv paths in execution order
        self.conv_node = {}
        self.input_source = {}  # conv path -> source of its input
        self.bn_of = {}
        self.adds = []
        self.groups = DisjointSet()
        self.outputs = []
        for node in self.graph.nodes:
            self._visit(node)
        missing = [c for c in self.convs if c not in self.bn_of]
        if missing:
            raise UnsupportedStructureError(
                f'conv {self.prefix}{missing[0]} is not followed directly by a BatchNorm: a pruned '
                'channel can only be made exactly zero through its BN')

    def describe(self, node: fx.Node) -> str:
        target = node.target if isinstance(node.target, str) else getattr(
            node.target, '__name__', repr(node.target))
        return f'{node.op} {target!r} in {self.prefix or "the backbone"}'

    def _visit(self, node: fx.Node) -> None:
        if node.op == 'placeholder':
            self.source[node] = None
        elif node.op == 'output':
            outs = node.args[0]
            self.outputs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        elif node.op == 'call_module':
            self._visit_module(node, self.modules[node.target])
        elif node.op == 'call_function' and node.target in _ADD_FUNCTIONS:
            self._visit_add(node)
        elif ((node.op == 'call_function' and node.target in _CHANNELWISE_FUNCTIONS)
              or (node.op == 'call_method' and node.target in _CHANNELWISE_METHODS)):
            self.source[node] = self.source[node.args[0]]
        elif node.op == 'call_method' and node.target in _ADD_METHODS:
            self._visit_add(node)
        else:
            raise UnsupportedStructureError(
                f'unsupported operation {self.describe(node)}: only Conv2d, BatchNorm, ReLU, '
                'pooling and residual additions are understood')

    def _visit_module(self, node: fx.Node, module: nn.Module) -> None:
        path = node.target
        args = _tensor_args(node)
        if len(args) != 1:
            raise UnsupportedStructureError(
                f'module {self.prefix}{path} takes {len(args)} tensors; only single-input '
                'modules are understood')
        arg = args[0]
        if type(module) is nn.Conv2d:
            if module.groups != 1:
                raise UnsupportedStructureError(
                    f'conv {self.prefix}{path} has groups={module.groups}; only dense convs '
                    '(groups=1) can be pruned')
            if path in self.conv_node:
                raise UnsupportedStructureError(
                    f'conv {self.prefix}{path} is called twice; shared convs cannot be pruned')
            self.convs.append(path)
            self.conv_node[path] = node
            self.input_source[path] = self.source[arg]
            self.groups.add(path)
            self.source[node] = path
        elif isinstance(module, _BatchNorm):
            if arg.op == 'call_module' and arg.target in self.conv_node:
                self.bn_of[arg.target] = path
            self.source[node] = self.source[arg]
        elif isinstance(module, _CHANNELWISE_MODULES):
            self.source[node] = self.source[arg]
        else:
            raise UnsupportedStructureError(
                f'unsupported module {self.prefix}{path} ({type(module).__name__}): only '
                'nn.Conv2d, BatchNorm, ReLU, pooling and residual additions are understood')

    def _visit_add(self, node: fx.Node) -> None:
        a, b = _tensor_args(node)
        sa, sb = self.source[a], self.source[b]
        if sa is None or sb is None:
            raise UnsupportedStructureError(
                f'{self.describe(node)} adds the input image to a feature map')
        self.groups.merge(sa, sb)
        self.source[node] = sa
        self.adds.append(node)

    def branch(self, node: fx.Node, block: str) -> list:
        """The nodes that feed `node` from inside `block`, in execution order."""
        seen, todo = set(), [node]
        while todo:
            n = todo.pop()
            if n in seen or not _inside(n, block):
                continue
            seen.add(n)
            todo.extend(_tensor_args(n))
        order = {n: i for i, n in enumerate(self.graph.nodes)}
        return sorted(seen, key=order.__getitem__)


def _residual_blocks(g: _GraphAnalysis) -> list:
    """(block path, residual-branch convs, shortcut module paths) for every residual add."""
    blocks = []
    for add in g.adds:
        block = _innermost_module(add)
        if block is None:
            raise UnsupportedStructureError(
                f'{g.describe(add)}: a residual add must sit inside a block module')
        if len(add.users) != 1 or not _is_relu(g, next(iter(add.users))):
            raise UnsupportedStructureError(
                f'residual add of block {g.prefix}{block} is not followed by a single ReLU')
        branches = [g.branch(arg, block) for arg in _tensor_args(add)]
        convs = [[n.target for n in br if n.target in g.conv_node] for br in branches]
        residual, shortcut = sorted(range(2), key=lambda i: -len(convs[i]))
        if len(convs[shortcut]) > 1 or len(convs[residual]) <= len(convs[shortcut]):
            raise UnsupportedStructureError(
                f'block {g.prefix}{block}: cannot tell its residual branch from its shortcut '
                f'(convs {convs[0]} and {convs[1]})')
        if any(n.op != 'call_module' for n in branches[shortcut]):
            raise UnsupportedStructureError(
                f'block {g.prefix}{block}: its shortcut holds functional operations; only '
                'modules can be kept when the block is removed')
        blocks.append((block, convs[residual], [n.target for n in branches[shortcut]]))
    names = [b[0] for b in blocks]
    if len(set(names)) != len(names):
        raise UnsupportedStructureError(f'a block holds two residual adds: {names}')
    return blocks


def _is_relu(g: _GraphAnalysis, node: fx.Node) -> bool:
    if node.op == 'call_module':
        return isinstance(g.modules[node.target], nn.ReLU)
    return ((node.op == 'call_function' and node.target in _CHANNELWISE_FUNCTIONS)
            or (node.op == 'call_method' and node.target in _CHANNELWISE_METHODS))


def _group_names(g: _GraphAnalysis) -> dict:
    """conv path -> group name: a lone conv names its group; a coupled group is named after the
    top-level child (the stage) of its last conv, e.g. 'img_backbone.layer3.residual'."""
    members = {}
    for conv in g.convs:
        members.setdefault(g.groups[conv], []).append(conv)
    names = {}
    for convs in members.values():
        name = (convs[0] if len(convs) == 1 else convs[-1].split('.')[0] + '.residual')
        for conv in convs:
            names[conv] = g.prefix + name
    if len(set(names.values())) != len(members):
        raise UnsupportedStructureError(f'two channel groups got the same name: {names}')
    return names


def _record_shapes(model: nn.Module, paths: list, run) -> dict:
    """Input and output shapes of the modules at `paths` during `run()`."""
    shapes, handles = {}, []

    def hook(path):
        def record(module, inputs, output):
            shapes[path] = (tuple(inputs[0].shape), tuple(output.shape))
        return record
    for path in paths:
        handles.append(model.get_submodule(path).register_forward_hook(hook(path)))
    try:
        with torch.no_grad(), _eval_mode(model):
            run()
    finally:
        for h in handles:
            h.remove()
    return shapes


def _find_consumers(neck: nn.Module, outs, neck_path: str, output_groups: list) -> list:
    """Convs of the neck that read a backbone output tensor as it is."""
    owner = {id(t): group for t, group in zip(outs, output_groups)}
    found, handles = [], []

    def hook(path):
        def record(module, inputs):
            if id(inputs[0]) in owner:
                found.append(Consumer(f'{neck_path}.{path}', owner[id(inputs[0])],
                                      module.in_channels, tuple(inputs[0].shape)))
        return record
    for path, module in neck.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_pre_hook(hook(path)))
    try:
        with torch.no_grad(), _eval_mode(neck):
            neck(tuple(outs))
    finally:
        for h in handles:
            h.remove()
    for c in found:
        if c.in_channels != outs[output_groups.index(c.group)].shape[1]:
            raise UnsupportedStructureError(f'{c.name} reads a slice of a backbone output')
    return found


def derive_structure(model: nn.Module, input_shape, backbone: Optional[str] = None,
                     neck: Optional[str] = None, head: Optional[str] = None) -> Structure:
    """The prunable structure of `model`'s backbone at the dummy input `input_shape`.

    `model` is either the backbone itself or a detector holding it at `backbone` (default
    'img_backbone' when that attribute exists) with a neck at `neck` (default 'img_neck') whose
    convs reading the backbone outputs become `consumers`. With `head` (the StreamPETR head's
    path, e.g. 'pts_bbox_head') the structure is the whole detector's: the head's dimensions
    and the neck's lateral convs become `parts` (mmdp/structure/head.py), the decoder layers
    removable blocks.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 4:
        raise ValueError(f'input_shape must be (N, C, H, W), found {input_shape}')
    backbone_path = _find_backbone(model, backbone)
    prefix = backbone_path + '.' if backbone_path else ''
    net = model.get_submodule(backbone_path) if backbone_path else model
    g = _GraphAnalysis(net, prefix)
    group_of = _group_names(g)

    param = next(net.parameters())
    x = torch.randn(input_shape, device=param.device, dtype=param.dtype)
    result = {}
    shapes = _record_shapes(net, g.convs, lambda: result.setdefault('outs', net(x)))
    outs = list(result['outs']) if isinstance(result['outs'], (tuple, list)) else [result['outs']]

    residual_blocks = _residual_blocks(g)
    block_of = {conv: prefix + block for block, convs, _ in residual_blocks for conv in convs}
    layers = []
    for conv in g.convs:
        module = g.modules[conv]
        src = g.input_source[conv]
        in_shape, out_shape = shapes[conv]
        layers.append(ConvLayer(
            name=prefix + conv, group=group_of[conv],
            input_group=None if src is None else group_of[src], bn=prefix + g.bn_of[conv],
            block=block_of.get(conv), in_channels=module.in_channels,
            out_channels=module.out_channels, kernel_size=tuple(module.kernel_size),
            stride=tuple(module.stride), padding=tuple(module.padding),
            dilation=tuple(module.dilation), bias=module.bias is not None,
            input_shape=in_shape, output_shape=out_shape))
    groups = {}
    for layer in layers:
        groups.setdefault(layer.group, layer.out_channels)
    blocks = [Block(prefix + block, tuple(prefix + c for c in convs),
                    tuple(prefix + s for s in shortcut))
              for block, convs, shortcut in residual_blocks]
    outputs = [group_of[g.source[node]] for node in g.outputs]

    consumers = []
    neck_path = _find_neck(model, neck, backbone_path)
    if neck_path:
        consumers = _find_consumers(model.get_submodule(neck_path), outs, neck_path, outputs)
    parts = []
    if head:
        head_groups, parts, head_blocks = head_parts(model, head)
        groups.update(head_groups)
        blocks += head_blocks
        parts = record_part_shapes(model, parts, input_shape) + neck_parts(consumers, model)
    return Structure(backbone_path, input_shape, groups, layers, blocks, consumers, outputs,
                     parts)
