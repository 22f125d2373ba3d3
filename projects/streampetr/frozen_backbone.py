"""A frozen image backbone at its random initial weights, for learning-curve runs where no
ImageNet checkpoint can be downloaded: its BN statistics are calibrated once on training
batches, then its outputs are cached by input. A frozen backbone in eval mode maps equal images
to equal features, so after one pass over a training set without random augmentation every step
trains the neck and the heads only."""
import hashlib

import torch
from mmdet3d.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch.nn.modules.batchnorm import _BatchNorm


@HOOKS.register_module()
class FrozenBackboneFeatureCache(Hook):
    """Needs `model.img_backbone` frozen (mmdet's ResNet: `frozen_stages=4, norm_eval=True`)
    and a deterministic train pipeline; refuses more than `max_entries` distinct input images
    (a random pipeline would fill memory instead of hitting the cache; an image's features take
    0.6 MB at 96x256)."""

    priority = 'VERY_HIGH'  # before any hook that runs the model in before_train

    def __init__(self, calib_batches: int = 30, max_entries: int = 16384):
        if calib_batches < 1 or max_entries < 1:
            raise ValueError(f'calib_batches and max_entries must be >= 1, got '
                             f'{calib_batches} and {max_entries}')
        self.calib_batches, self.max_entries = calib_batches, max_entries
        self.cache = {}  # sha1 of an input image -> its backbone outputs, one per level

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        backbone = model.img_backbone
        # Cached features would not see a pruning event's masks, nor give saliency gradients.
        pruning = [type(h).__name__ for h in runner.hooks
                   if type(h).__name__ in ('PruningHook', 'SaliencyHook')]
        if pruning:
            raise ValueError(f'FrozenBackboneFeatureCache is for dense training; this config '
                             f'also has {", ".join(pruning)} in custom_hooks')
        trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(f'FrozenBackboneFeatureCache: model.img_backbone must be frozen '
                             f'(frozen_stages=4, norm_eval=True for a ResNet), but '
                             f'{len(trainable)} parameters train, e.g. {trainable[0]}')
        self._calibrate(model, backbone, runner.train_dataloader)
        runner.logger.info(f'img_backbone frozen; BN statistics calibrated on '
                           f'{self.calib_batches} training batches; its outputs are cached')
        self._cache_outputs(backbone)

    @torch.no_grad()
    def _calibrate(self, model, backbone, dataloader) -> None:
        """Cumulative BN statistics of the random weights (their initial statistics would leave
        the activations unnormalised)."""
        norms = [m for m in backbone.modules() if isinstance(m, _BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
            m.train()
        for i, data in enumerate(dataloader):
            if i == self.calib_batches:
                break
            imgs = model.data_preprocessor(data, True)['inputs']['imgs']
            backbone(imgs.flatten(0, 1))
        for m in norms:
            m.eval()

    def _cache_outputs(self, backbone) -> None:
        """Per image, not per batch: the streaming sampler pairs the same samples into batches
        differently from one pass to the next."""
        forward, cache, limit = backbone.forward, self.cache, self.max_entries

        def cached_forward(x):
            keys = [hashlib.sha1(img.detach().cpu().contiguous().numpy().tobytes()).digest()
                    for img in x]
            missing = [i for i, k in enumerate(keys) if k not in cache]
            if missing:
                if len(cache) + len(missing) > limit:
                    raise ValueError(f'FrozenBackboneFeatureCache: more than {limit} '
                                       f'distinct backbone input images; is the train '
                                       f'pipeline random (resize, crop, flip)?')
                with torch.no_grad():
                    outs = forward(x[missing])
                for j, i in enumerate(missing):
                    cache[keys[i]] = tuple(level[j].clone() for level in outs)
            return tuple(torch.stack([cache[k][level] for k in keys])
                         for level in range(len(cache[keys[0]])))

        backbone.forward = cached_forward
