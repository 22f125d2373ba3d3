"""A detector built from a config and (optional) checkpoint, and frames ready for its forward."""
from typing import Optional

import torch
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmdet3d.registry import MODELS

from mmdp.checkpoint_compat import check_loadable  # also: checkpoint loading on torch >= 2.6
from mmdp.config_utils import load_config
from projects.streampetr.fake_inputs import fake_frame


def build_detector(config: str, checkpoint: Optional[str] = None, cfg_options=None,
                   device='cpu'):
    """(model in eval mode on `device`, its config). Random initialisation without a
    checkpoint; with one, every key must fit (a pruned config with dense weights is refused)."""
    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    if cfg.get('custom_imports'):
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**cfg.custom_imports)
    model = MODELS.build(cfg.model)
    if checkpoint:
        check_loadable(model, checkpoint, config)  # names the mismatching keys, or the config
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    else:
        model.init_weights()
    return model.to(torch.device(device)).eval(), cfg


@torch.no_grad()
def preprocessed_frames(model, img_size, count: int, start: int = 0, scene: str = 'fake'):
    """`count` consecutive random frames of one scene (the first starts the memory), through
    the model's data preprocessor: the keyword arguments of `model(**data, mode='predict')`."""
    h, w = img_size
    return [model.data_preprocessor(fake_frame(h, w, index=start + i, scene=scene,
                                               prev_exists=(start + i) > 0), False)
            for i in range(count)]
