from .formatting import StreamPack3DDetInputs
from .global_aug import StreamGlobalRotScaleTransImage
from .image_aug import StreamResizeCropFlipImage
from .loading import StreamLoadAnnotations3D, StreamLoadMultiViewImageFromFiles

__all__ = [
    'StreamGlobalRotScaleTransImage', 'StreamLoadAnnotations3D',
    'StreamLoadMultiViewImageFromFiles', 'StreamPack3DDetInputs', 'StreamResizeCropFlipImage'
]
