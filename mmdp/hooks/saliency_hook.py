"""The hook that collects Taylor saliency over a window of training iterations."""
from mmdet3d.registry import HOOKS
from mmengine.hooks import Hook

from mmdp.importance import TaylorSaliency

from .runner_utils import bare_model, runner_structure

CHECKPOINT_KEY = 'saliency'


@HOOKS.register_module()
class SaliencyHook(Hook):
    """Collect the Taylor saliency of every prunable channel during iterations [begin, end)
    (0-based); `collector.average()` gives it to the pruning hook, which resets it after each
    pruning event. The running sums travel in checkpoints, so a resumed run goes on with them.
    """
    priority = 'NORMAL'

    def __init__(self, end: int, begin: int = 0):
        if not 0 <= begin < end:
            raise ValueError(f'SaliencyHook: the window [begin, end) = [{begin}, {end}) must '
                             'hold at least one iteration, with begin >= 0')
        self.begin, self.end = int(begin), int(end)
        self.collector = None
        self._restored = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Called before `before_train`, which builds the collector.
        self._restored = checkpoint.get(CHECKPOINT_KEY)

    def before_train(self, runner) -> None:
        # Not in `before_run`: testing a checkpoint of a pruning run runs that too.
        self.collector = TaylorSaliency(bare_model(runner), runner_structure(runner))
        if self._restored is not None:
            self.collector.load_state_dict(self._restored)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.collector.state_dict()

    def _collecting(self, runner) -> bool:
        return self.begin <= runner.iter < self.end

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self._collecting(runner):
            self.collector.start()
            # With a loss scaler (AmpOptimWrapper) backward sees gradients times its scale.
            scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
            self.collector.begin_iteration(1.0 if scaler is None else scaler.get_scale())

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self._collecting(runner):
            return
        if not self.collector.end_iteration():
            runner.logger.warning(f'saliency of iteration {runner.iter} is not finite (on this '
                                  'rank or another): left out of the average')
        if runner.iter + 1 >= self.end:
            self.collector.stop()

    def after_train(self, runner) -> None:
        self.collector.stop()
