"""The pruning vector of JointPruning and its mapping to a sub-network and an image size.

The vector lives in a normalised box [0, 1]^d, 1 meaning "as in the dense model" on every
coordinate: per channel group inside a block a width (layer-wise channel numbers, as the method
searches them), per backbone stage a depth (blocks kept) and optionally a residual width (the
channels the stage's blocks add to), and one coordinate for the camera image size (a position on
a ladder of sizes). `decode` rounds it to a
discrete `Setting`; `to_choice` turns a setting into a `StructureChoice` that keeps the most
important channels and blocks of a `Ranking`.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from mmdp.structure import Structure, StructureChoice


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
    kind: str  # 'width' | 'residual' | 'depth' | 'size'
    stage: Optional[str]  # None for the image size
    cell: float  # normalised length of one discrete step (the rounding cell)
    group: Optional[str] = None  # the channel group a width sets


@dataclass(frozen=True)
class Ranking:
    """Importance order: per group its channel indices, most important first; per stage its
    block names in removal order, least important first."""
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
        return dict(stages=stages, img_size=list(self.size))


def find_stages(structure: Structure) -> list:
    """Group the removable blocks into stages (blocks under the same parent module) and tell
    each stage's inner groups from the residual group its blocks share."""
    owners = {}  # group -> blocks holding a layer of it (None: a layer outside any block)
    for layer in structure.layers:
        owners.setdefault(layer.group, set()).add(layer.block)
    by_stage = {}
    for block in structure.blocks:
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
    """Coordinates of the pruning vector of a backbone structure.

    Widths: fraction `min_width + u * (1 - min_width)` of a group's channels, rounded to a
    multiple of `chunk` (at least one chunk, at most the group). Depth: `min_depth + u * (n -
    min_depth)` blocks kept, rounded. A stage with depth 0 keeps only its first block's
    projection (the identity residual of `mmdp.structure`). Size: ladder entry
    `round((1 - u) * (len(ladder) - 1))`, the ladder ordered from the full size down.
    """

    def __init__(self, structure: Structure, ladder, chunk: int = 32, min_width: float = 0.25,
                 min_depth: int = 1, prune_residual: bool = False, divisor: int = 32):
        if chunk < 1:
            raise ValueError(f'chunk must be >= 1 channel, found {chunk}')
        if not 0 < min_width <= 1:
            raise ValueError(f'min_width must lie in (0, 1], found {min_width}')
        if min_depth < 0:
            raise ValueError(f'min_depth must be >= 0 blocks, found {min_depth}')
        self.structure = structure
        self.stages = find_stages(structure)
        self.ladder = _check_ladder(ladder, divisor)
        self.chunk, self.min_width, self.min_depth = int(chunk), float(min_width), int(min_depth)
        self.prune_residual = bool(prune_residual)
        for st in self.stages:
            if len(st.blocks) < self.min_depth:
                raise ValueError(f'stage {st.name!r} has {len(st.blocks)} blocks, fewer than '
                                 f'min_depth={self.min_depth}')
        self.coords = []
        for st in self.stages:
            self.coords += [Coordinate(f'{g}.width', 'width', st.name, self._width_cell((g, )), g)
                            for g in st.inner_groups]
            if self.prune_residual:
                self.coords.append(Coordinate(f'{st.name}.residual', 'residual', st.name,
                                              self._width_cell((st.residual_group, ))))
            span = len(st.blocks) - self.min_depth
            self.coords.append(Coordinate(f'{st.name}.depth', 'depth', st.name,
                                          1.0 / span if span else 1.0))
        self.coords.append(Coordinate('img_size', 'size', None,
                                      1.0 / (len(self.ladder) - 1) if len(self.ladder) > 1
                                      else 1.0))
        self._stage = {st.name: st for st in self.stages}

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

    def _width_cell(self, groups) -> float:
        full = max(self.structure.groups[g] for g in groups)
        return min(1.0, self.chunk / (full * (1 - self.min_width))) if self.min_width < 1 else 1.0

    def _width(self, group: str, u: float) -> int:
        full = self.structure.groups[group]
        step = min(self.chunk, full)
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
                n = len(st.blocks)
                depths.append((st.name, int(round(self.min_depth + value * (n - self.min_depth)))))
            else:
                size = self.ladder[int(round((1 - value) * (len(self.ladder) - 1)))]
        for st in self.stages:
            widths.setdefault(st.residual_group, self.structure.groups[st.residual_group])
        return Setting(tuple(sorted(widths.items())), tuple(depths), tuple(size))

    def full_setting(self) -> Setting:
        return self.decode(np.ones(self.dim))

    def to_choice(self, setting: Setting, ranking: Ranking) -> StructureChoice:
        """The sub-network of `setting`: the top-ranked channels of every pruned group and the
        top-ranked blocks of every stage."""
        widths = {g: w for g, w in setting.widths if w < self.structure.groups[g]}
        channels = {g: sorted(ranking.channels[g][:w]) for g, w in widths.items()}
        removed = []
        for stage, depth in setting.depths:
            order = ranking.blocks[stage]
            removed.extend(order[:len(order) - depth])
        return StructureChoice(widths, removed, channels)
