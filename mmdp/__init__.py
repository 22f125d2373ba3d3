"""mmdp: multi-dimensional, latency-aware pruning of StreamPETR on MMDetection3D 1.x."""
from . import checkpoint_compat  # noqa: F401  (must run before any checkpoint is loaded)

__version__ = '0.1.0'
