"""Detectors as deployed: built from a config and checkpoint, fed frames, run in one runtime."""
from .detector import build_detector, preprocessed_frames
from .paired import paired_speedup

__all__ = ['build_detector', 'paired_speedup', 'preprocessed_frames']
