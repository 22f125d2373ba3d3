from .nuscenes_metric import StreamNuScenesMetric
from .samplers import StreamBatchSampler, StreamContiguousSampler
from .stream_nuscenes_dataset import StreamNuScenesDataset
from .transforms import (StreamGlobalRotScaleTransImage, StreamLoadAnnotations3D,
                         StreamLoadMultiViewImageFromFiles, StreamPack3DDetInputs,
                         StreamResizeCropFlipImage)

__all__ = [
    'StreamBatchSampler', 'StreamContiguousSampler', 'StreamGlobalRotScaleTransImage',
    'StreamLoadAnnotations3D', 'StreamLoadMultiViewImageFromFiles', 'StreamNuScenesDataset',
    'StreamNuScenesMetric', 'StreamPack3DDetInputs', 'StreamResizeCropFlipImage'
]
