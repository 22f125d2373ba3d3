"""Taylor saliency of prunable channels and the scores a pruning solver reads from it."""
from .scores import channel_order, group_scores, layer_values
from .taylor import TaylorSaliency

__all__ = ['TaylorSaliency', 'channel_order', 'group_scores', 'layer_values']
