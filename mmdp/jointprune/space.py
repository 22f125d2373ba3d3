"""The pruning vector of JointPruning and its mapping to a sub-network and an image size.

The vector lives in a normalised box [0, 1]^d, 1 meaning "as in the dense model" on every
coordinate: per channel group inside a block a width (layer-wise channel numbers, as the method
searches them), per backbone stage a depth (blocks kept) and optionally a residual width (the
channels the stage's blocks add to), and one coordinate for the camera image size (a position on
a ladder of sizes).

A whole-detector structure (`derive_structure(..., head=...)`, a config's `prunable_head`) adds
the head's dimensions through the same kinds: a width per head part (the position encoder's
and every decoder layer's FFN hidden units, every attention's heads), one depth for the decoder
(layers kept, the least important removed first, as a backbone stage's blocks) and, with token
settings, one 'tokens' coordinate: a position on the allowed (num_query, num_propagated,
memory_len) settings, ascending, the dense one at 1, as the image size is on its ladder.

`decode` rounds a vector to a discrete `Setting`; `to_choice` turns a setting into a
`StructureChoice` that keeps the most important channels, units, queries and blocks of a
`Ranking`.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mmdp.structure import Structure, StructureChoice
from mmdp.structure.head import ATTENTION, DECODER_LAYER, MLP, TOKENS


@dataclass(frozen=True)
class Stage:
    """A run of residual blocks: `inner_groups` are the channel groups inside its blocks (each
    group belongs to one block), `residual_group` the group its blocks add to."""
    name: str
    blocks: tuple
    inner_groups: tuple
    residual_group: str


@dataclass(frozen=True)
class Coordinate:
    name: str  # e.g. 'img_backbone.layer3.0.conv1.width'
    kind: str  # 'width' | 'residual' | 'depth' | 'size' | 'tokens'
    stage: Optional[str]  # None for the image size, the token setting, the position encoder
    cell: float  # normalised length of one discrete step (the rounding cell)
    group: Optional[str] = None  # the channel group a width sets


@dataclass(frozen=True)
class Ranking:
    """Importance order: per group its channel indices (a head part's units, a token group's
    learnable queries), most important first; per stage (the decoder too) its block names in
    removal order, least important first."""
    channels: dict
    blocks: dict


@dataclass(frozen=True)
class Setting:
    """A decoded pruning vector: width per pruned group, blocks kept per stage, image (H, W).
    Hashable, so that equal sub-networks share one loss evaluation and one latency prediction."""
    widths: tuple  # ((group, width), ...) sorted by group
    depths: tuple  # ((stage, blocks kept), ...) in stage order
    size: tuple  # (H, W)

    def summary(self, space: 'PruningSpace') -> dict:
        """Per stage: its inner groups' widths (in block order), residual width, depth; and the
        image size (for logs)."""
        widths = dict(self.widths)
        depths = dict(self.depths)
        stages = {}
        for st in space.stages:
            stages[st.name] = dict(widths=[widths[g] for g in st.inner_groups],
                                   residual=widths[st.residual_group], depth=depths[st.name])
        out = dict(stages=stages, img_size=list(self.size))
        if space.head_groups:
            out['head'] = dict(widths={g: widths[g] for g in space.head_groups})
            if space.decoder is not None:
                out['head']['decoder_layers'] = depths[space.decoder.name]
            if space.tokens is not None:
                out['head']['tokens'] = list(space.token_setting(widths[space.tokens.group]))
        return out


def find_stages(structure: Structure) -> list:
    """Group the removable blocks into stages (blocks under the same parent module) and tell
    each stage's inner groups from the residual group its blocks share."""
    owners = {}  # group -> blocks holding a layer of it (None: a layer outside any block)
    for layer in structure.layers:
        owners.setdefault(layer.group, set()).add(layer.block)
    by_stage = {}
    for block in structure.blocks:
        if block.kind == DECODER_LAYER:  # the head's (`find_decoder`)
            continue
        by_stage.setdefault(block.name.rsplit('.', 1)[0], []).append(block)
    stages = []
    for name, blocks in by_stage.items():
        inner, residual = [], set()
        for block in blocks:
            for layer_name in block.layers:
                group = structure.layer(layer_name).group
                if owners[group] == {block.name}:
                    if group not in inner:
                        inner.append(group)
                else:
                    residual.add(group)
        if len(residual) != 1 or not inner:
            raise ValueError(f'stage {name!r}: expected inner groups and one residual group '
                             f'shared by its blocks, found inner {inner} and residual '
                             f'{sorted(residual)}')
        stages.append(Stage(name, tuple(b.name for b in blocks), tuple(inner),
                            residual.pop()))
    if not stages:
        raise ValueError('the structure has no removable blocks: nothing for JointPruning')
    return stages


def find_decoder(structure: Structure) -> Optional[Stage]:
    """The decoder layers of a whole-detector structure as one stage (no residual group; its
    inner groups are its layers' part groups), or None for a backbone structure."""
    blocks = tuple(b.name for b in structure.blocks if b.kind == DECODER_LAYER)
    if not blocks:
        return None
    groups = tuple(p.group for p in structure.valued_parts if p.block in blocks)
    return Stage(blocks[0].rsplit('.', 1)[0], blocks, groups, None)


def _check_ladder(ladder, divisor: int) -> tuple:
    sizes = tuple(tuple(int(v) for v in size) for size in ladder)
    if not sizes:
        raise ValueError('the image-size ladder is empty; give at least the full size')
    for size in sizes:
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f'ladder size {size}: expected (H, W) with H, W > 0')
        if size[0] % divisor or size[1] % divisor:
            raise ValueError(f'ladder size {size}: H and W must be multiples of {divisor} '
                             '(the padding divisor of the data preprocessor)')
    areas = [h * w for h, w in sizes]
    if any(a <= b for a, b in zip(areas, areas[1:])):
        raise ValueError(f'the ladder {sizes} must be ordered from the largest image area to '
                         'the smallest, without repeats')
    return sizes


class PruningSpace:
    """Coordinates of the pruning vector of a backbone (or whole-detector) structure.

    Widths: fraction `min_width + u * (1 - min_width)` of a group's channels (a head part's
    units), rounded to a multiple of its step (at least one step, at most the group): `chunk`
    channels, `head_chunk` hidden units (default `chunk`; the latency table's step makes every
    width a profiled one), one attention head. Depth: `min_depth + u * (n - min_depth)` blocks
    kept, rounded (`min_layers` for the decoder). A stage with depth 0 keeps only its first
    block's projection (the identity residual of `mmdp.structure`). Size: ladder entry
    `round((1 - u) * (len(ladder) - 1))`, the ladder ordered from the full size down. Tokens:
    setting `round(u * (n - 1))` of the n allowed ones, ascending.
    """

    def __init__(self, structure: Structure, ladder, chunk: int = 32, min_width: float = 0.25,
                 min_depth: int = 1, prune_residual: bool = False, divisor: int = 32,
                 head_chunk: Optional[int] = None, min_layers: int = 1):
        head_chunk = chunk if head_chunk is None else head_chunk
        if chunk < 1 or head_chunk < 1:
            raise ValueError(f'chunk and head_chunk must be >= 1 channel / unit, found {chunk} '
                             f'and {head_chunk}')
        if not 0 < min_width <= 1:
            raise ValueError(f'min_width must lie in (0, 1], found {min_width}')
        if min_depth < 0:
            raise ValueError(f'min_depth must be >= 0 blocks, found {min_depth}')
        self.structure = structure
        self.stages = find_stages(structure)
        self.decoder = find_decoder(structure)
        self.ladder = _check_ladder(ladder, divisor)
        self.chunk, self.min_width, self.min_depth = int(chunk), float(min_width), int(min_depth)
        self.head_chunk = int(head_chunk)
        self.prune_residual = bool(prune_residual)
        self._min_depth = {st.name: self.min_depth for st in self.stages}
        if self.decoder is not None:
            if not 1 <= min_layers <= len(self.decoder.blocks):
                raise ValueError(f'min_layers must lie in [1, {len(self.decoder.blocks)}] '
                                 f'decoder layers, found {min_layers}')
            self._min_depth[self.decoder.name] = int(min_layers)
        for st in self.stages:
            if len(st.blocks) < self.min_depth:
                raise ValueError(f'stage {st.name!r} has {len(st.blocks)} blocks, fewer than '
                                 f'min_depth={self.min_depth}')
        self._step = {g: min(self.chunk, full) for g, full in structure.groups.items()}
        heads = [p for p in structure.valued_parts if p.kind in (MLP, ATTENTION)]
        for part in heads:
            self._step[part.group] = 1 if part.kind == ATTENTION else min(
                self.head_chunk, part.units)
        tokens = [p for p in structure.valued_parts if p.kind == TOKENS]
        self.tokens = tokens[0] if tokens else None
        self.head_groups = tuple(p.group for p in heads + tokens)

        self.coords = []
        for st in self.stages:
            self.coords += [Coordinate(f'{g}.width', 'width', st.name, self._width_cell(g), g)
                            for g in st.inner_groups]
            if self.prune_residual:
                self.coords.append(Coordinate(f'{st.name}.residual', 'residual', st.name,
                                              self._width_cell(st.residual_group)))
            self.coords.append(self._depth_coordinate(st))
        self.coords += [Coordinate(f'{p.group}.width', 'width', p.block and self.decoder.name,
                                   self._width_cell(p.group), p.group) for p in heads]
        if self.decoder is not None:
            # One depth for the decoder, not a keep/remove coordinate per layer: a 0/1
            # coordinate's one rounding cell is its whole range, so its difference quotient
            # could only compare "all" with "nothing"; a depth removes layers one at a time in
            # the saliency's order, as a backbone stage's blocks.
            self.coords.append(self._depth_coordinate(self.decoder))
        if self.tokens is not None:
            n = len(self.tokens.settings)
            self.coords.append(Coordinate(self.tokens.group, 'tokens', None,
                                          1.0 / (n - 1) if n > 1 else 1.0, self.tokens.group))
        self.coords.append(Coordinate('img_size', 'size', None,
                                      1.0 / (len(self.ladder) - 1) if len(self.ladder) > 1
                                      else 1.0))
        self._stage = {st.name: st for st in self.block_stages}

    def _depth_coordinate(self, st: Stage) -> Coordinate:
        span = len(st.blocks) - self._min_depth[st.name]
        return Coordinate(f'{st.name}.depth', 'depth', st.name, 1.0 / span if span else 1.0)

    @property
    def block_stages(self) -> list:
        """The stages whose blocks a `Ranking` orders: the backbone's, then the decoder."""
        return self.stages + ([self.decoder] if self.decoder is not None else [])

    @property
    def dim(self) -> int:
        return len(self.coords)

    @property
    def names(self) -> list:
        return [c.name for c in self.coords]

    @property
    def cells(self) -> np.ndarray:
        return np.array([c.cell for c in self.coords])

    @property
    def full_size(self) -> tuple:
        return self.ladder[0]

    def token_setting(self, width: int) -> tuple:
        """(num_query, num_propagated, memory_len) of the token setting with `width` queries."""
        return next(tuple(s) for s in self.tokens.settings if s[0] == width)

    def _width_cell(self, group: str) -> float:
        full = self.structure.groups[group]
        return (min(1.0, self._step[group] / (full * (1 - self.min_width)))
                if self.min_width < 1 else 1.0)

    def _width(self, group: str, u: float) -> int:
        full = self.structure.groups[group]
        step = self._step[group]
        frac = self.min_width + u * (1 - self.min_width)
        return int(min(full, max(step, round(frac * full / step) * step)))

    def decode(self, u) -> Setting:
        u = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
        if u.shape != (self.dim, ):
            raise ValueError(f'pruning vector of length {u.shape} for a space of {self.dim} '
                             f'coordinates {self.names}')
        widths, depths = {}, []
        size = self.full_size
        for coord, value in zip(self.coords, u):
            st = self._stage.get(coord.stage)
            if coord.kind == 'width':
                widths[coord.group] = self._width(coord.group, value)
            elif coord.kind == 'residual':
                widths[st.residual_group] = self._width(st.residual_group, value)
            elif coord.kind == 'depth':
                n, low = len(st.blocks), self._min_depth[st.name]
                depths.append((st.name, int(round(low + value * (n - low)))))
            elif coord.kind == 'tokens':
                settings = self.tokens.settings
                widths[coord.group] = settings[int(round(value * (len(settings) - 1)))][0]
            else:
                size = self.ladder[int(round((1 - value) * (len(self.ladder) - 1)))]
        for st in self.stages:
            widths.setdefault(st.residual_group, self.structure.groups[st.residual_group])
        return Setting(tuple(sorted(widths.items())), tuple(depths), tuple(size))

    def full_setting(self) -> Setting:
        return self.decode(np.ones(self.dim))

    def to_choice(self, setting: Setting, ranking: Ranking) -> StructureChoice:
        """The sub-network of `setting`: the top-ranked channels (units, learnable queries) of
        every pruned group and the top-ranked blocks (decoder layers) of every stage."""
        widths = {g: w for g, w in setting.widths if w < self.structure.groups[g]}
        channels = {g: sorted(ranking.channels[g][:w]) for g, w in widths.items()}
        removed = []
        for stage, depth in setting.depths:
            order = ranking.blocks[stage]
            removed.extend(order[:len(order) - depth])
        return StructureChoice(widths, removed, channels)
