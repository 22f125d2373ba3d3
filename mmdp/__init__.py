"""mmdp: multi-dimensional, latency-aware pruning of StreamPETR on MMDetection3D 1.x."""
__version__ = '0.1.0'
