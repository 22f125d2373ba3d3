"""Deployment of StreamPETR: ONNX graphs (backbone + neck, head step with explicit memory) and
the runtimes that run them."""
from .onnx_export import BACKBONE, HEAD, OrtStreamPETR, export_onnx

__all__ = ['BACKBONE', 'HEAD', 'OrtStreamPETR', 'export_onnx']
