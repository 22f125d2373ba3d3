"""The StreamPETR head with its dimensions physically pruned, built from a config."""
from mmdet3d.registry import MODELS

from mmdp.structure import Structure, StructureChoice
from mmdp.structure.apply import PassQuery, _slice_part
from mmdp.structure.head import head_parts
from projects.streampetr.models.streampetr_head import StreamPETRHead


@MODELS.register_module()
class PrunedStreamPETRHead(StreamPETRHead):
    """A StreamPETR head pruned to `widths` ({group: units}, groups named relative to the head,
    e.g. 'position_encoder.hidden', 'decoder.layers.1.ffn.hidden',
    'decoder.layers.1.cross_attn.heads', and 'tokens': the learnable queries of one of its
    `token_settings`, which sets num_propagated and memory_len too; groups not named keep their
    width) with `removed_layers` (e.g. ['decoder.layers.0']) replaced by `PassQuery`. Every
    other argument is `StreamPETRHead`'s; the weights come from the exported checkpoint."""

    def __init__(self, widths: dict, removed_layers=(), **kwargs):
        super().__init__(**kwargs)
        groups, parts, blocks = head_parts(self, '')
        structure = Structure('', (), groups, [], blocks, parts=parts)
        choice = StructureChoice(widths, removed_layers)
        try:
            choice.check(structure)
        except ValueError as e:
            raise ValueError(f'PrunedStreamPETRHead: {e}') from None
        for part in parts:
            if part.block not in choice.removed_blocks:
                _slice_part(self, part, choice.kept(structure, part.group))
        for name in choice.removed_blocks:
            self.set_submodule(name, PassQuery())
        self.widths, self.removed_layers = dict(widths), sorted(removed_layers)
