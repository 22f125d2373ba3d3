"""A structure choice: a width per channel group, which channels to keep, which blocks to remove."""
from dataclasses import dataclass, field

from .derive import Structure


@dataclass
class StructureChoice:
    """Widths per group (groups not named keep their full width), kept channel indices per group
    (default: the first `width` channels) and removed blocks."""
    widths: dict = field(default_factory=dict)
    removed_blocks: frozenset = frozenset()
    channels: dict = field(default_factory=dict)

    def __post_init__(self):
        self.widths = {g: int(w) for g, w in self.widths.items()}
        self.removed_blocks = frozenset(self.removed_blocks)
        self.channels = {g: sorted(int(c) for c in idx) for g, idx in self.channels.items()}

    @classmethod
    def from_solution(cls, solution: dict) -> 'StructureChoice':
        """From a solution dict of docs/problem-format.md (`widths`, `removed_blocks`)."""
        return cls(solution['widths'], solution.get('removed_blocks', ()))

    def check(self, structure: Structure) -> None:
        """Raise ValueError naming the first group, width, channel or block that does not fit."""
        for group, width in self.widths.items():
            if group not in structure.groups:
                raise ValueError(f'width given for unknown group {group!r}')
            if not 1 <= width <= structure.groups[group]:
                raise ValueError(f'group {group!r}: width {width} outside '
                                 f'[1, {structure.groups[group]}]')
        for group, idx in self.channels.items():
            if group not in structure.groups:
                raise ValueError(f'channels given for unknown group {group!r}')
            full = structure.groups[group]
            if len(idx) != self.width(structure, group):
                raise ValueError(f'group {group!r}: {len(idx)} kept channels given for width '
                                 f'{self.width(structure, group)}')
            if len(set(idx)) != len(idx) or idx[0] < 0 or idx[-1] >= full:
                raise ValueError(f'group {group!r}: kept channels must be distinct indices in '
                                 f'[0, {full}), found {idx}')
        unknown = sorted(self.removed_blocks - set(structure.block_names))
        if unknown:
            raise ValueError(f'removed block {unknown[0]!r} is not a removable block of the '
                             f'structure ({structure.block_names})')

    def width(self, structure: Structure, group: str) -> int:
        return self.widths.get(group, structure.groups[group])

    def all_widths(self, structure: Structure) -> dict:
        return {g: self.width(structure, g) for g in structure.groups}

    def kept(self, structure: Structure, group: str) -> list:
        """The kept channel indices of `group`, ascending."""
        return self.channels.get(group) or list(range(self.width(structure, group)))
