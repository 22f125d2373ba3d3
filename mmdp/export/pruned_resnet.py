"""mmdet's ResNet with channels and residual blocks physically pruned, built from a config."""
from mmdet.models.backbones import ResNet
from mmdet3d.registry import MODELS

from mmdp.structure import StructureChoice, derive_structure, prune_copy

# Any input the backbone accepts: the structure's names and channel counts do not depend on it.
PROBE_SHAPE = (1, 3, 64, 64)


class StructureMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the pruned backbone of the config."""


@MODELS.register_module()
class PrunedResNet(ResNet):
    """A ResNet pruned to `widths` ({group: channels}, groups named as `derive_structure` names
    them on the bare backbone, e.g. 'layer3.residual', 'layer3.0.conv1'; groups not named keep
    their width) with `removed_blocks` (e.g. ['layer3.4']) replaced by `IdentityResidual`.
    Every other argument is mmdet's `ResNet`'s. Loading a checkpoint of another structure raises
    `StructureMismatchError` naming the first layer that does not fit."""

    def __init__(self, widths: dict, removed_blocks=(), **kwargs):
        super().__init__(**kwargs)
        structure = derive_structure(self, PROBE_SHAPE)
        choice = StructureChoice(widths, removed_blocks)
        try:
            choice.check(structure)
        except ValueError as e:
            raise ValueError(f'PrunedResNet(depth={self.depth}): {e}') from None
        pruned = prune_copy(self, structure, choice, backbone_only=True)
        for name, child in pruned.named_children():
            setattr(self, name, child)
        self.widths, self.removed_blocks = dict(widths), sorted(removed_blocks)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # mmengine's load_checkpoint only warns about tensors of the wrong shape and leaves
        # them initialised at random; a pruned backbone must refuse them.
        self.check_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def check_state_dict(self, state_dict, prefix: str = '') -> None:
        """Raise `StructureMismatchError` naming the first layer (in module order) whose tensors
        are missing, extra or of another shape in `state_dict`. A state dict without any tensor
        of this backbone is let through, as mmengine lets any missing module through."""
        given = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not given:
            return
        ours = self.state_dict()
        problems = {}
        for key, tensor in ours.items():
            if key not in given:
                problems[key] = 'is missing from the checkpoint'
            elif tuple(given[key].shape) != tuple(tensor.shape):
                problems[key] = (f'has shape {tuple(given[key].shape)} in the checkpoint but '
                                 f'{tuple(tensor.shape)} in the config')
        for key in given:
            if key not in ours:
                problems[key] = 'is in the checkpoint but not in the config'
        if not problems:
            return
        # Module order: our keys in order, each extra key right after the shared key before it.
        position, last = {}, -1
        index = {key: i for i, key in enumerate(ours)}
        for i, key in enumerate(given):
            last = index.get(key, last)
            position[key] = (index[key], 0) if key in index else (last, 1 + i)
        for key in ours:
            position.setdefault(key, (index[key], 0))
        first = min(problems, key=position.__getitem__)
        layer, tensor = first.rsplit('.', 1)
        raise StructureMismatchError(
            f'{prefix}{layer}: {tensor} {problems[first]}; the checkpoint was exported with '
            f'another structure than this PrunedResNet (removed blocks {self.removed_blocks})')
