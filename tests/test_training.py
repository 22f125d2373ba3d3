"""The user's commands on the synthetic nuScenes: a short training run lowers the loss, a
checkpoint resumes on torch 2.13, and tools/test.py reports the nuScenes metrics."""
import glob
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

CONFIG = 'configs/streampetr_r50_small_cpu.py'
ITERS = 8


def data_options(infos):
    root = infos['root'] + '/'
    options = [f'train_dataloader.dataset.data_root={root}',
               f'train_dataloader.dataset.ann_file={infos["train"]}']
    for split in ('val', 'test'):  # the config's test_* are copies of its val_*
        options += [f'{split}_dataloader.dataset.data_root={root}',
                    f'{split}_dataloader.dataset.ann_file={infos["val"]}',
                    f'{split}_evaluator.data_root={root}',
                    f'{split}_evaluator.ann_file={infos["val"]}']
    return options


def tool(*args):
    return subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True)


def logged(work_dir, key):
    scalars = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(max(scalars)) as f:
        rows = [json.loads(line) for line in f]
    return [r[key] for r in rows if key in r]


@pytest.fixture(scope='module')
def trained(nusc_infos, tmp_path_factory):
    work = str(tmp_path_factory.mktemp('train'))
    tool('tools/train.py', CONFIG, '--work-dir', work, '--cfg-options', *data_options(nusc_infos),
         f'train_cfg.max_iters={ITERS}', 'train_cfg.val_interval=1000',
         'default_hooks.checkpoint.interval=4', 'randomness.seed=0')
    return work


def test_short_training_lowers_the_loss(trained):
    losses = logged(trained, 'loss')
    assert len(losses) == ITERS
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_checkpoint_resumes(trained, nusc_infos):
    ckpt = torch.load(osp.join(trained, 'iter_4.pth'), weights_only=False)
    assert ckpt['meta']['iter'] == 4
    tool('tools/train.py', CONFIG, '--work-dir', trained, '--resume',
         osp.join(trained, 'iter_4.pth'), '--cfg-options', *data_options(nusc_infos),
         'train_cfg.max_iters=5', 'train_cfg.val_interval=1000',
         'default_hooks.checkpoint.interval=5')
    resumed = torch.load(osp.join(trained, 'iter_5.pth'), weights_only=False)
    assert resumed['meta']['iter'] == 5
    # The optimizer state came back with the weights: AdamW's step count went on from 4.
    steps = [s['step'] for s in resumed['optimizer']['state'].values()]
    assert max(float(s) for s in steps) == 5


def test_evaluation_reports_nuscenes_metrics(trained, nusc_infos):
    out = tool('tools/test.py', CONFIG, osp.join(trained, f'iter_{ITERS}.pth'), '--work-dir',
               osp.join(trained, 'test'), '--cfg-options', *data_options(nusc_infos))
    assert 'NuScenes metric/pred_instances_3d_NuScenes/NDS' in out.stdout + out.stderr


def test_unknown_config_key_is_named(nusc_infos):
    proc = subprocess.run([sys.executable, 'tools/train.py', CONFIG, '--cfg-options',
                           'default_hooks.loger.interval=1'], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "'default_hooks.loger.interval' does not exist" in proc.stderr
    assert "'loger' is not a key of default_hooks" in proc.stderr


def test_head_overfits_one_sample(nusc_root, nusc_infos):
    """The 3D head alone, on one training sample's fixed features (random backbone), learns to
    put its highest-scoring boxes on that sample's ground truth: the end-to-end check of
    denoising, matching, losses and decoding (a wrong sign, frame or box coding anywhere keeps
    the boxes metres away, as a model that has not learned yet does)."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmdet3d.registry import DATASETS, MODELS
    from scipy.optimize import linear_sum_assignment

    torch.manual_seed(0)
    init_default_scope('mmdet3d')
    cfg = Config.fromfile(CONFIG)
    loading = [t for t in cfg.train_pipeline if t['type'] not in
               ('StreamResizeCropFlipImage', 'StreamGlobalRotScaleTransImage')]
    resize = dict(type='StreamResizeCropFlipImage', final_dim=cfg.img_size, test_mode=True)
    dataset = DATASETS.build(dict(cfg.train_dataloader.dataset, data_root=nusc_root + '/',
                                  ann_file=nusc_infos['train'],
                                  pipeline=loading[:-1] + [resize, loading[-1]]))
    model = MODELS.build(cfg.model)
    model.init_weights()
    data = model.data_preprocessor(pseudo_collate([dataset[2]]), True)
    with torch.no_grad():
        feats = model.extract_feat(data['inputs']['imgs'])
    model.extract_feat = lambda imgs: feats  # the backbone and neck stay as they are
    heads = [model.pts_bbox_head, model.img_roi_head]
    optimizer = torch.optim.AdamW([p for h in heads for p in h.parameters() if p.requires_grad],
                                  lr=4e-4, weight_decay=0.01)
    model.train()
    for _ in range(300):
        model.reset_memory()  # every step is a first frame
        loss = sum(model.loss(data['inputs'], data['data_samples']).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.reset_memory()
    with torch.no_grad():
        pred = model.predict(data['inputs'], data['data_samples'])[0].pred_instances_3d
    gt = data['data_samples'][0].gt_instances_3d
    gt_xy = gt.bboxes_3d.gravity_center[:, :2]
    top = pred.scores_3d.argsort(descending=True)[:len(gt_xy)]
    dist = torch.cdist(gt_xy, pred.bboxes_3d.gravity_center[top, :2])
    rows, cols = linear_sum_assignment(dist.numpy())
    same_class = (gt.labels_3d[rows] == pred.labels_3d[top][cols]).float().mean()
    print(f'{len(gt_xy)} boxes: median distance {dist[rows, cols].median():.2f} m, '
          f'same class {same_class:.2f}')
    assert dist[rows, cols].median() < 1.5
