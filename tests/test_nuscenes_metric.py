"""StreamNuScenesMetric with the real nuscenes-devkit on the synthetic mini_val scene."""
import json
import os

import mmengine
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmdet3d.evaluation.metrics import NuScenesMetric
from mmdet3d.registry import METRICS
from mmdet3d.structures import LiDARInstance3DBoxes

from projects.streampetr.datasets.nuscenes_converter import CLASSES
from projects.streampetr.datasets.nuscenes_metric import StreamNuScenesMetric

PREFIX = 'NuScenes metric/pred_instances_3d_NuScenes'


def build_metric(nusc_infos):
    metric = METRICS.build(dict(type='StreamNuScenesMetric', data_root=nusc_infos['root'],
                                ann_file=nusc_infos['val'],
                                modality=dict(use_camera=True, use_lidar=False)))
    metric.dataset_meta = dict(classes=CLASSES, version='v1.0-mini')
    return metric


def ground_truth_predictions(ann_file, label_shift=0):
    """Each val sample's labelled boxes as a model would output them: 9-dim LiDAR boxes
    (bottom centre, as mmdet3d stores them), score 1."""
    outputs = []
    for info in mmengine.load(ann_file)['data_list']:
        instances = [i for i in info['instances'] if i['bbox_label_3d'] >= 0]
        boxes = np.array([i['bbox_3d'] + i['velocity'] for i in instances]).reshape(-1, 9)
        labels = [(i['bbox_label_3d'] + label_shift) % len(CLASSES) for i in instances]
        outputs.append(dict(
            sample_idx=info['sample_idx'],
            pred_instances_3d=dict(
                bboxes_3d=LiDARInstance3DBoxes(boxes, box_dim=9, origin=(0.5, 0.5, 0.5)),
                scores_3d=torch.ones(len(instances)),
                labels_3d=torch.tensor(labels, dtype=torch.long))))
    return outputs


def evaluate(metric, outputs, size):
    for start in range(0, len(outputs), 2):
        metric.process({}, outputs[start:start + 2])
    return metric.evaluate(size)


def test_metric_is_registered_as_a_nuscenes_metric(nusc_infos):
    assert isinstance(build_metric(nusc_infos), NuScenesMetric)
    assert METRICS.get('StreamNuScenesMetric') is StreamNuScenesMetric


def test_ground_truth_scores_perfectly_in_any_order(nusc_infos):
    outputs = ground_truth_predictions(nusc_infos['val'])
    metrics = evaluate(build_metric(nusc_infos), outputs[::-1], len(outputs))
    assert metrics[f'{PREFIX}/mAP'] >= 0.99
    assert metrics[f'{PREFIX}/NDS'] >= 0.95
    for name in CLASSES:
        assert metrics[f'{PREFIX}/{name}_AP_dist_0.5'] == 1.0


def test_wrong_labels_score_low(nusc_infos):
    outputs = ground_truth_predictions(nusc_infos['val'], label_shift=1)
    metrics = evaluate(build_metric(nusc_infos), outputs, len(outputs))
    assert metrics[f'{PREFIX}/mAP'] < 0.1


def test_missing_samples_are_named(nusc_infos):
    outputs = ground_truth_predictions(nusc_infos['val'])
    with pytest.raises(ValueError, match=r'predictions for 5 distinct samples.*has 6.*\[3\]'):
        evaluate(build_metric(nusc_infos), outputs[:3] + outputs[4:], len(outputs))


def evaluate_shard(rank, nusc_infos, shards, rendezvous, out_dir):
    """One rank of a gloo group: predicts its contiguous shard, then evaluates."""
    dist.init_process_group('gloo', init_method=f'file://{rendezvous}', rank=rank,
                            world_size=len(shards))
    try:
        start, stop = shards[rank]
        outputs = ground_truth_predictions(nusc_infos['val'])
        metrics = evaluate(build_metric(nusc_infos), outputs[start:stop], len(outputs))
        with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(metrics, f)
    finally:
        dist.destroy_process_group()


def test_unequal_contiguous_shards_on_two_ranks(nusc_infos, tmp_path):
    # Shards of 2 and 5 samples, overlapping on sample 1 (as padding would): mmengine's
    # zip-based collection would keep only 4 of the 6 samples.
    shards = [(0, 2), (1, 6)]
    # fork: the ranks inherit the imported stack instead of importing it again (CPU only).
    mp.start_processes(evaluate_shard, nprocs=len(shards), start_method='fork',
                       args=(nusc_infos, shards, str(tmp_path / 'rendezvous'), str(tmp_path)))
    metrics = [json.loads((tmp_path / f'rank{rank}.json').read_text()) for rank in range(2)]
    assert metrics[0] == metrics[1]
    assert metrics[0][f'{PREFIX}/mAP'] >= 0.99
