"""What the pruning hook has decided so far, as it travels in checkpoints."""
from dataclasses import asdict, dataclass, field

from mmdp.structure import StructureChoice

# The checkpoint key of the pruning state, read by the hook on resume and by the exporter.
CHECKPOINT_KEY = 'pruning'
STATE_VERSION = 1


@dataclass
class PruningState:
    """Widths and kept channels per group, removed blocks, and how many of the schedule's
    pruning events have run (with their summaries)."""
    widths: dict = field(default_factory=dict)
    channels: dict = field(default_factory=dict)
    removed_blocks: list = field(default_factory=list)
    events_done: int = 0
    history: list = field(default_factory=list)

    @property
    def pruned(self) -> bool:
        return self.events_done > 0

    def choice(self) -> StructureChoice:
        return StructureChoice(self.widths, self.removed_blocks, self.channels)

    def update(self, choice: StructureChoice, summary: dict) -> None:
        self.widths = dict(choice.widths)
        self.channels = {g: list(c) for g, c in choice.channels.items()}
        self.removed_blocks = sorted(choice.removed_blocks)
        self.events_done += 1
        self.history.append(summary)

    def to_dict(self) -> dict:
        return {'version': STATE_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> 'PruningState':
        if data.get('version') != STATE_VERSION:
            raise ValueError(f"pruning state version {data.get('version')!r} is not "
                             f'{STATE_VERSION}')
        return cls(**{k: v for k, v in data.items() if k != 'version'})
