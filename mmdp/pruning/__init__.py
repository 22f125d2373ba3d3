"""Pruning inside training: the state kept in checkpoints, the masks, and one pruning event."""
from .event import build_problem, choice_from_solution, format_summary, summarize
from .masks import PruningMasks
from .state import CHECKPOINT_KEY, PruningState

__all__ = ['CHECKPOINT_KEY', 'PruningMasks', 'PruningState', 'build_problem',
           'choice_from_solution', 'format_summary', 'summarize']
