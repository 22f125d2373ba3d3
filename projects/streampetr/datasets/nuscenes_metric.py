"""mmdet3d's nuScenes metric, gathering results from contiguous test shards.

Streaming inference gives each rank a contiguous range of samples (a scene must be seen in
order), and the ranges differ in length. mmengine's ``collect_results`` assumes interleaved,
equally long shards: it zips the parts, which reorders samples and drops those past the shortest
part. Here every rank's results are gathered whole, keyed and sorted by ``sample_idx``.
"""
from typing import Sequence

from mmdet3d.evaluation.metrics import NuScenesMetric
from mmdet3d.registry import METRICS
from mmengine.dist import all_gather_object, broadcast_object_list, is_main_process


@METRICS.register_module()
class StreamNuScenesMetric(NuScenesMetric):
    """``NuScenesMetric`` (same arguments) for any split of the test set across ranks.

    Results are de-duplicated by ``sample_idx`` (samplers may pad shards by repeating samples),
    so every sample of the dataset must be predicted at least once; the metrics are
    computed on rank 0 and broadcast.
    """

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Keep the 3D predictions and the sample index (a camera-only detector has no 2D
        predictions, which the parent requires)."""
        for data_sample in data_samples:
            pred_3d = {name: value.to('cpu')
                       for name, value in data_sample['pred_instances_3d'].items()}
            self.results.append(dict(pred_instances_3d=pred_3d,
                                     sample_idx=data_sample['sample_idx']))

    def evaluate(self, size: int) -> dict:
        parts = all_gather_object(self.results)
        by_index = {}
        for part in parts:
            for result in part:
                by_index.setdefault(result['sample_idx'], result)
        if len(by_index) != size:
            missing = sorted(set(range(size)) - by_index.keys())[:5]
            raise ValueError(f'{self.__class__.__name__} got predictions for {len(by_index)} '
                             f'distinct samples across all ranks, but the dataset has {size} '
                             f'(first missing sample_idx: {missing})')
        if is_main_process():
            metrics = self.compute_metrics([by_index[idx] for idx in sorted(by_index)])
            if self.prefix:
                metrics = {f'{self.prefix}/{name}': value for name, value in metrics.items()}
        else:
            metrics = None
        broadcast = [metrics]
        broadcast_object_list(broadcast)
        self.results.clear()
        return broadcast[0]
