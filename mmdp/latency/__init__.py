"""Latency models of pruned backbones, their table files and the profiler that fills them."""
from .config import build_from_config
from .models import (TERMS, BilinearLutLatency, FlopsLatency, LinearLutLatency,
                     MeasuredDetectorLatency, MeasuredLatency, TableLatencyModel,
                     fit_overheads)
from .profiler import fit_table, measure_samples, profile_layers, profile_parts, sample_choices
from .registry import LATENCY_MODELS
from .table import (CHECKED_FIELDS, LatencyTable, TableMismatchError, make_meta,
                    width_grid)
from .timer import DTYPES, MODES, Timer, device_name

__all__ = [
    'BilinearLutLatency', 'CHECKED_FIELDS', 'DTYPES', 'FlopsLatency', 'LATENCY_MODELS',
    'LatencyTable', 'LinearLutLatency', 'MODES', 'MeasuredDetectorLatency', 'MeasuredLatency',
    'TERMS',
    'TableLatencyModel', 'TableMismatchError', 'Timer', 'build_from_config', 'device_name',
    'fit_overheads', 'fit_table', 'make_meta', 'measure_samples', 'profile_layers', 'profile_parts',
    'sample_choices', 'width_grid'
]
