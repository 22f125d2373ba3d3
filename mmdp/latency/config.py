"""Build the model whose backbone is profiled from an mmengine config: a detector holding an
`img_backbone` (and maybe an `img_neck`), or a bare backbone config."""
from mmengine.config import Config
from mmengine.registry import init_default_scope


def build_from_config(config: str, input_shape=None):
    """Returns (model in eval mode, backbone input shape). The shape is `input_shape`, or the
    config's `latency_input_shape` (e.g. (6, 3, 256, 704): six camera views)."""
    import mmdet3d.utils
    from mmdet3d.registry import MODELS

    cfg = Config.fromfile(config)
    if 'model' not in cfg:
        raise KeyError(f"config {config} has no 'model'")
    mmdet3d.utils.register_all_modules(init_default_scope=False)
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    if input_shape is None:
        input_shape = cfg.get('latency_input_shape')
        if input_shape is None:
            raise ValueError(f"config {config} has no 'latency_input_shape': give "
                             '--input-shape N C H W')
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 4:
        raise ValueError(f'input shape must be N C H W, found {input_shape}')
    model = MODELS.build(cfg.model)
    model.eval()  # mmdet's ResNet.train returns None: no chaining
    return model, input_shape
