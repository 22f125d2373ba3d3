"""The config of the fixed sub-network: the run's config at the chosen camera image size.

Every `StreamResizeCropFlipImage` gets `final_dim` = the chosen (H, W) and, in training, its
`resize_lim` scaled by the larger of the two axis ratios (the source is resized isotropically,
then cropped; the search resized the crop itself, anisotropically when the ladder changes the
aspect ratio). `img_size` and `latency_input_shape` follow. The pruned structure is not in the
config: the JointPruning hook applies it from the checkpoint's `jointprune` state.
"""
import copy

from mmengine.config import Config

from mmdp.fileio import atomic_write

RESIZE_TRANSFORM = 'StreamResizeCropFlipImage'


def _resize_transforms(node, found: list) -> list:
    if isinstance(node, dict):
        if node.get('type') == RESIZE_TRANSFORM:
            found.append(node)
        for value in node.values():
            _resize_transforms(value, found)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _resize_transforms(value, found)
    return found


def final_size_config(cfg: Config, size, full_size) -> Config:
    """A copy of `cfg` whose pipelines produce images of `size` (H, W) instead of `full_size`."""
    size, full_size = tuple(int(s) for s in size), tuple(int(s) for s in full_size)
    out = copy.deepcopy(cfg)
    transforms = _resize_transforms([out[key] for key in out.keys()], [])
    if not transforms:
        raise ValueError(f'the config has no {RESIZE_TRANSFORM} in any pipeline: cannot set '
                         f'the image size {size}')
    ratio = max(size[0] / full_size[0], size[1] / full_size[1])
    for t in transforms:
        if tuple(t.get('final_dim', full_size)) != full_size:
            raise ValueError(f'{RESIZE_TRANSFORM} has final_dim {t["final_dim"]}, expected the '
                             f'full size {full_size}')
        t['final_dim'] = size
        if 'resize_lim' in t:
            t['resize_lim'] = tuple(r * ratio for r in t['resize_lim'])
    out.img_size = size
    if 'latency_input_shape' in out:
        out.latency_input_shape = (*tuple(out.latency_input_shape)[:2], *size)
    out.load_from, out.resume = None, False
    return out


def dump_config(cfg: Config, path: str) -> None:
    """Write `cfg` as a .py config to `path`, whole or not at all."""
    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(cfg.pretty_text)
    atomic_write(path, write)
