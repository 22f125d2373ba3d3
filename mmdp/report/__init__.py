"""Pruning reports: read what runs left in their work directories, draw figures, write Markdown."""
from .collect import RunRecord, collect_run
from .markdown import write_report

__all__ = ['RunRecord', 'collect_run', 'write_report']
