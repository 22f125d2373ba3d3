"""StreamPETR model: loss and predict on the small config, and the streaming memory."""
import itertools

import numpy as np
import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import Det3DDataSample, LiDARInstance3DBoxes
from mmengine.registry import init_default_scope

from mmdp.config_utils import load_config
from projects.streampetr.fake_inputs import add_fake_ground_truth, fake_frame
from projects.streampetr.models.assigners import StreamHungarianAssigner3D
from projects.streampetr.models.embeddings import pos2posemb3d
from projects.streampetr.models.focal_head import gaussian_heatmap, ltrb_to_cxcywh
from projects.streampetr.models.grid_mask import GridMask
from projects.streampetr.models.temporal_decoder import StreamTemporalDecoder, TemporalDecoderLayer

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


# ---- the published model's behaviours, each against an independent formula ---------------------
DENSE = 'configs/streampetr_r50_704_dense.py'


@pytest.fixture(scope='module')
def dense_cfg():
    init_default_scope('mmdet3d')
    return load_config(DENSE)


def _sine_np(c, num_feats=128):
    """One coordinate's encoding: feature k is sin (k even) / cos (k odd) of
    2 pi c / 10000^(2 floor(k / 2) / num_feats)."""
    k = np.arange(num_feats)
    arg = 2 * np.pi * c[..., None] / 10000.0**(2 * (k // 2) / num_feats)
    return np.where(k % 2 == 0, np.sin(arg), np.cos(arg))


def test_pos2posemb3d_concatenates_y_x_z():
    pos = torch.rand(5, 3, dtype=torch.float64)
    p = pos.numpy()
    expected = np.concatenate([_sine_np(p[:, 1]), _sine_np(p[:, 0]), _sine_np(p[:, 2])], -1)
    assert np.abs(pos2posemb3d(pos).numpy() - expected).max() < 1e-5  # dim_t is float32


def _cone_frame(n=6, h=2, w=3, pad=(32, 48)):
    gen = np.random.default_rng(0)
    l2i = np.stack([np.diag([300.0 + 50 * v, -280.0 - 40 * v, 1.0, 1.0]) for v in range(n)])
    l2i[:, :3, 3] = gen.normal(size=(n, 3))
    l2i[:, :2, 2] = [pad[1] / 2, pad[0] / 2]
    focal = np.stack([l2i[:, 0, 0], l2i[:, 1, 1]], -1)
    frame = dict(img2lidar=torch.tensor(np.linalg.inv(l2i)[None], dtype=torch.float32),
                 focal=torch.tensor(focal[None], dtype=torch.float32), pad_shape=pad)
    return frame, l2i, focal


def _expected_cone(l2i, focal, h, w, pad, view_of_focal, bins=(63, 34), depth_num=64):
    n = len(l2i)
    k = np.arange(depth_num)
    depth = 1.0 + (61.2 - 1.0) / (depth_num * (depth_num + 1)) * k * (k + 1)
    lo, hi = np.array([-61.2, -61.2, -10.0]), np.array([61.2, 61.2, 10.0])
    rows = []
    for j in range(n * h * w):
        view, pix = divmod(j, h * w)
        r, c = divmod(pix, w)
        u, v = (c + 0.5) * pad[1] / w, (r + 0.5) * pad[0] / h
        pts = []
        for d in (depth[bins[0]], depth[bins[1]]):
            p = np.linalg.inv(l2i[view]) @ np.array([u * d, v * d, d, 1.0])
            pts.append((p[:3] - lo) / (hi - lo))
        rows.append(np.concatenate([np.abs(focal[view_of_focal(j)]) / 1e3, *pts]))
    return np.stack(rows)[None]


@pytest.mark.parametrize('per_view', [False, True])
def test_spatial_alignment_input_is_the_published_one(dense_cfg, per_view):
    """|fx|, |fy| / 1e3 of view j mod N at token j (official tiling) or of the token's own view
    (per_view_intrinsics), then the ray points at depth bins 63 and 34."""
    head = MODELS.build(dict(dense_cfg.model.pts_bbox_head, per_view_intrinsics=per_view))
    n, h, w, pad = 6, 2, 3, (32, 48)
    frame, l2i, focal = _cone_frame(n, h, w, pad)
    _, cone = head._position_embedding(frame, h, w)
    own_view = (lambda j: j // (h * w)) if per_view else (lambda j: j % n)
    expected = _expected_cone(l2i, focal, h, w, pad, own_view)
    assert np.abs(cone.numpy() - expected).max() < 1e-4


def test_class_and_box_branches_are_shared_and_sizes_are_published(dense_cfg):
    model = MODELS.build(dense_cfg.model)
    head = model.pts_bbox_head
    assert all(b is head.cls_branches[0] for b in head.cls_branches)
    assert all(b is head.reg_branches[0] for b in head.reg_branches)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    # Official counts; the official 3D head also stores 96 constants as frozen parameters.
    assert count(model.img_backbone) == 23508032
    assert count(model.img_neck) == 1377024
    assert count(head) == 11187320 - 96
    assert count(model.img_roi_head) == 1185553


def test_hungarian_cost_weights_the_box_code():
    """Cost = 2 * focal cost + 0.25 * sum over the first 8 dims of |cw * (pred - gt)|, checked
    by brute force over every assignment."""
    gen = torch.Generator().manual_seed(0)
    preds, logits = torch.randn(5, 10, generator=gen), torch.randn(5, 10, generator=gen)
    gt = torch.cat([torch.randn(3, 3, generator=gen) * 5, torch.rand(3, 3, generator=gen) + 0.5,
                    torch.randn(3, 3, generator=gen)], 1)
    labels = torch.tensor([0, 3, 8])
    cw = torch.tensor([2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    code = torch.stack([gt[:, 0], gt[:, 1], gt[:, 2], gt[:, 3].log(), gt[:, 4].log(),
                        gt[:, 5].log(), gt[:, 6].sin(), gt[:, 6].cos()], -1)
    p = logits.sigmoid()
    focal = (-(p + 1e-12).log() * 0.25 * (1 - p)**2 + (1 - p + 1e-12).log() * 0.75 * p**2)
    cost = torch.empty(5, 3)
    for i in range(5):
        for j in range(3):
            reg = (cw[:8] * (preds[i, :8] - code[j])).abs().sum()
            cost[i, j] = 2 * focal[i, labels[j]] + 0.25 * reg
    best = min(itertools.permutations(range(5), 3),
               key=lambda rows: sum(cost[r, j] for j, r in enumerate(rows)))
    assigner = StreamHungarianAssigner3D()
    p_idx, g_idx = assigner.assign(preds, logits, gt, labels, cw)
    assert {(int(r), int(g)) for r, g in zip(p_idx, g_idx)} == {(r, j) for j, r in enumerate(best)}


def test_query_denoising_always_uses_every_group(cfg, model):
    """40 boxes (over the 30 at which the port used to lower the group count): the published
    code keeps every one of the 10 groups (pad 400)."""
    model.train()
    head = model.pts_bbox_head
    boxes = torch.cat([torch.rand(40, 3) * 20, torch.rand(40, 3) + 1, torch.rand(40, 3)], 1)
    ref, blocked, dn = head._prepare_for_dn(1, head.reference_points.weight, [boxes],
                                            [torch.zeros(40, dtype=torch.long)])
    assert head.dn_groups == 10 and dn['pad'] == 400 and ref.shape[1] == 400 + head.num_query
    assert blocked.shape == (400 + head.num_query + head.num_propagated,
                             400 + head.num_query + head.memory_len)


def test_cross_attention_drops_no_probabilities_self_attention_does():
    layer = TemporalDecoderLayer(embed_dims=32, num_heads=4, ffn_dims=64, dropout=0.5).train()
    q, k = torch.randn(1, 7, 32), torch.randn(1, 9, 32)
    torch.manual_seed(0)
    a = layer.cross_attn(q, k, k)
    torch.manual_seed(1)
    assert torch.equal(a, layer.cross_attn(q, k, k))
    torch.manual_seed(0)
    s = layer.self_attn(q, k, k)
    torch.manual_seed(1)
    assert not torch.allclose(s, layer.self_attn(q, k, k))


def test_decoder_checkpointing_changes_neither_outputs_nor_gradients():
    def run(with_cp):
        torch.manual_seed(0)
        dec = StreamTemporalDecoder(num_layers=2, embed_dims=32, num_heads=4, ffn_dims=64,
                                    dropout=0.0, with_cp=with_cp).train()
        gen = torch.Generator().manual_seed(1)
        q, qp = torch.randn(1, 5, 32, generator=gen), torch.randn(1, 5, 32, generator=gen)
        img = torch.randn(1, 8, 32, generator=gen, requires_grad=True)
        out = dec(q, qp, img, torch.randn(1, 8, 32, generator=gen))
        out.square().sum().backward()
        return out.detach(), img.grad, dec.layers[0].ffn[0].weight.grad

    for a, b in zip(run(False), run(True)):
        assert torch.allclose(a, b, atol=1e-6)


def test_grid_mask_keeps_the_grid_bands_in_training_only():
    x = torch.ones(2, 3, 20, 30)
    gm = GridMask(prob=1.0).eval()
    assert torch.equal(gm(x), x)
    gm.train()
    torch.manual_seed(5)
    out = gm(x)
    torch.manual_seed(5)
    torch.rand(())  # the draw against prob
    d = int(torch.randint(2, 20, ()))
    band = min(max(int(d * 0.5 + 0.5), 1), d - 1)
    st_h, st_w = int(torch.randint(d, ())), int(torch.randint(d, ()))
    hh, ww = 30, 45  # the 1.5x canvas

    def on(pos, start, length):
        return pos >= start and (pos - start) % d < band and (pos - start) // d < length // d

    expected = torch.tensor([[float(on(i + 5, st_h, hh) or on(j + 7, st_w, ww))
                              for j in range(30)] for i in range(20)])
    assert torch.equal(out, x * expected)
    assert 0 < expected.mean() < 1


def test_grid_mask_probability_is_the_published_one(dense_cfg):
    model = MODELS.build(dense_cfg.model).train()
    assert model.grid_mask.prob == 0.7
    torch.manual_seed(0)
    x = torch.ones(1, 3, 32, 32)
    hits = sum(not torch.equal(model.grid_mask(x), x) for _ in range(2000))
    assert 1340 < hits < 1460  # 0.7 of 2000, +- 3 standard deviations


def test_preprocessor_turns_bgr_into_normalised_rgb(dense_cfg):
    """The loader decodes BGR; the published model saw (RGB - mean) / std."""
    model = MODELS.build(dense_cfg.model)
    bgr = torch.stack([torch.full((32, 32), 10.0), torch.full((32, 32), 100.0),
                       torch.full((32, 32), 200.0)])[None].repeat(6, 1, 1, 1)
    out = model.data_preprocessor(dict(inputs=dict(img=[bgr]), data_samples=[Det3DDataSample()]),
                                  False)['inputs']['imgs'][0, 0, :, 0, 0]
    rgb = torch.tensor([200.0, 100.0, 10.0])
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    expected = (rgb - mean) / std
    assert torch.allclose(out, expected)


def test_focal_head_boxes_and_centerness_targets():
    loc = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    ltrb = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.3, 0.05, 0.2, 0.3]])
    # x1 = x - l, y1 = y - t, x2 = x + r, y2 = y + b, clipped to [0, 1], as (cx, cy, w, h).
    expected = torch.tensor([[0.6, 0.6, 0.4, 0.6], [0.15, 0.925, 0.3, 0.15]])
    assert torch.allclose(ltrb_to_cxcywh(loc, ltrb), expected)

    heat = gaussian_heatmap((6, 8), [(3.7, 2.2)], [1])
    sigma = 3 / 6
    for y in range(6):
        for x in range(8):
            dy, dx = y - 2, x - 3
            inside = max(abs(dx), abs(dy)) <= 1
            want = np.exp(-(dx * dx + dy * dy) / (2 * sigma**2)) if inside else 0
            assert abs(heat[y, x] - want) < 1e-6


def test_under_autocast_only_backbone_and_neck_run_in_low_precision(cfg, model):
    """As published (auto_fp16(out_fp32=True) on extract_feat): the heads compute in fp32."""
    h, w = cfg.img_size
    data = model.data_preprocessor(
        batch_of([add_fake_ground_truth(fake_frame(h, w, i)) for i in range(2)]), True)
    dtypes = {}
    for name, module in (('backbone', model.img_backbone.layer1[0].conv1),
                         ('head', model.pts_bbox_head.position_encoder[0]),
                         ('roi', model.img_roi_head.cls)):
        module.register_forward_hook(lambda m, i, o, name=name: dtypes.__setitem__(name, o.dtype))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        losses = model(**data, mode='loss')
    assert dtypes == {'backbone': torch.bfloat16, 'head': torch.float32, 'roi': torch.float32}
    assert all(v.dtype == torch.float32 for v in losses.values() if torch.is_tensor(v))
