"""StreamPETR model: loss and predict on the small config, and the streaming memory."""
import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmengine.registry import init_default_scope

from mmdp.config_utils import load_config
from projects.streampetr.fake_inputs import add_fake_ground_truth, fake_frame

CONFIG = 'configs/streampetr_r50_small_cpu.py'


@pytest.fixture(scope='module')
def cfg():
    init_default_scope('mmdet3d')
    return load_config(CONFIG)


@pytest.fixture
def model(cfg):
    torch.manual_seed(0)
    m = MODELS.build(cfg.model)
    m.init_weights()
    return m


def batch_of(frames):
    return dict(inputs=dict(img=[f['inputs']['img'][0] for f in frames]),
                data_samples=[f['data_samples'][0] for f in frames])


def test_loss_is_finite_and_trains_every_head(cfg, model):
    h, w = cfg.img_size
    data = model.data_preprocessor(batch_of([add_fake_ground_truth(fake_frame(h, w, i)) for i in range(2)]),
                                   True)
    assert data['inputs']['imgs'].shape == (2, 6, 3, h, w)
    losses = model(**data, mode='loss')
    for key in ('loss_cls', 'loss_bbox', 'dn_loss_cls', 'dn_loss_bbox', 'd0.loss_cls',
                'loss2d_cls', 'loss2d_centerness', 'loss2d_bbox', 'loss2d_iou',
                'loss2d_centers'):
        assert torch.isfinite(losses[key]), key
    sum(losses.values()).backward()
    head = model.pts_bbox_head
    assert head.reg_branches[-1][-1].weight.grad.abs().sum() > 0
    for conv in ('cls', 'centerness', 'ltrb', 'center2d'):
        assert getattr(model.img_roi_head, conv).weight.grad.abs().sum() > 0, conv
    assert model.img_backbone.layer4[0].conv1.weight.grad.abs().sum() > 0


def test_predict_returns_nuscenes_boxes(cfg, model):
    model.eval()
    h, w = cfg.img_size
    with torch.no_grad():
        out = model.test_step(fake_frame(h, w, 0))
    pred = out[0].pred_instances_3d
    assert isinstance(pred.bboxes_3d, LiDARInstance3DBoxes)
    assert pred.bboxes_3d.tensor.shape[1] == 9
    assert len(pred.scores_3d) == len(pred.labels_3d) == len(pred.bboxes_3d) > 0
    assert 0 <= int(pred.labels_3d.min()) and int(pred.labels_3d.max()) < 10


def test_memory_carries_within_a_scene_and_resets_at_a_new_one(cfg, model):
    model.eval()
    head = model.pts_bbox_head
    h, w = cfg.img_size
    with torch.no_grad():
        model.test_step(fake_frame(h, w, 0, scene='a'))
        first = head.memory_embedding.clone()
        assert first[:, :head.topk_proposals].abs().sum() > 0
        assert first[:, head.topk_proposals:].abs().sum() == 0  # nothing older yet

        model.test_step(fake_frame(h, w, 1, scene='a'))
        # The previous frame's entries moved back by top-k, aged by the 0.5 s between frames.
        k = head.topk_proposals
        assert torch.allclose(head.memory_embedding[:, k:2 * k], first[:, :k])
        assert torch.allclose(head.memory_timestamp[:, k:2 * k], torch.full((1, k, 1), 0.5))

        model.test_step(fake_frame(h, w, 2, scene='b', prev_exists=False))
        assert head.memory_embedding[:, k:].abs().sum() == 0
        assert head.memory_timestamp.abs().sum() == 0


def test_scene_change_resets_even_when_prev_exists(cfg, model):
    """A test shard may start mid-scene: the slot's last scene decides, not only prev_exists."""
    model.eval()
    h, w = cfg.img_size
    head = model.pts_bbox_head
    with torch.no_grad():
        model.test_step(fake_frame(h, w, 0, scene='a'))
        model.test_step(fake_frame(h, w, 5, scene='c', prev_exists=True))
    assert head.memory_embedding[:, head.topk_proposals:].abs().sum() == 0


def test_first_frame_prediction_does_not_depend_on_stale_memory(cfg, model):
    model.eval()
    h, w = cfg.img_size
    frame = fake_frame(h, w, 0, scene='x', prev_exists=False)
    with torch.no_grad():
        fresh = model.test_step(frame)[0].pred_instances_3d.scores_3d
        model.test_step(fake_frame(h, w, 3, scene='y'))
        again = model.test_step(fake_frame(h, w, 0, scene='x', prev_exists=False))
    assert torch.allclose(fresh, again[0].pred_instances_3d.scores_3d)
