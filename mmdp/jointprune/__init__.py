"""JointPruning: numerical-gradient search over backbone width, depth and camera image size (and,
for a whole detector, the head's widths, heads, decoder depth and token setting) under a latency
budget, with the dense weights shared by every sub-network."""
from .estimator import SelfAdaptedGradient, StepRecord, descent_direction
from .evaluate import SubnetLoss, preserved_stream_state
from .final_config import final_size_config
from .hook import JointPruningHook
from .latency import SizedLatency, build_sized_latency
from .plot import plot_trajectory, read_trajectory
from .projection import InfeasibleBudgetError, LatencyProjection
from .ranking import bn_gamma_ranking, taylor_ranking
from .resize import resize_batch, resize_data_batch_
from .space import PruningSpace, Ranking, Setting, find_decoder, find_stages
from .subnet import subnetwork

__all__ = [
    'InfeasibleBudgetError', 'JointPruningHook', 'LatencyProjection', 'PruningSpace', 'Ranking',
    'SelfAdaptedGradient', 'Setting', 'SizedLatency', 'StepRecord', 'SubnetLoss',
    'bn_gamma_ranking', 'build_sized_latency', 'descent_direction', 'final_size_config',
    'find_decoder', 'find_stages', 'plot_trajectory', 'preserved_stream_state', 'read_trajectory',
    'resize_batch', 'resize_data_batch_', 'subnetwork', 'taylor_ranking'
]
