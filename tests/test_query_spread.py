"""projects/streampetr/query_spread.py: the spread of the queries, zero where every query has
the same reference point, and positive at the random initial weights."""
import pytest
import torch

from mmdp.runtime.detector import build_detector, preprocessed_frames
from projects.streampetr.query_spread import query_spread


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    model, cfg = build_detector('configs/streampetr_r50_small_cpu.py')
    return model


def test_queries_differ_at_the_random_initial_weights(model):
    batch = preprocessed_frames(model, (96, 256), 1)[0]
    spread = query_spread(model, batch)
    assert spread['query_pos'] > 0.05 and spread['decoder_out'] > 0.01
    for layer in range(len(model.pts_bbox_head.decoder.layers)):
        attn = spread[f'layer{layer}.cross_attn']
        assert attn['specificity'] > 0.005
        assert 0 < attn['entropy'] < attn['uniform_entropy']


def test_queries_with_one_reference_point_do_not_differ(model):
    batch = preprocessed_frames(model, (96, 256), 1)[0]
    ref = model.pts_bbox_head.reference_points.weight
    saved = ref.detach().clone()
    with torch.no_grad():
        ref[:] = torch.tensor([0.3, 0.6, 0.5])
    try:
        spread = query_spread(model, batch)
    finally:
        with torch.no_grad():
            ref.copy_(saved)
    assert spread['query_pos'] < 1e-6 and spread['decoder_out'] < 1e-5
    assert spread['score_std'] < 1e-6
    for layer in range(len(model.pts_bbox_head.decoder.layers)):
        assert spread[f'layer{layer}.cross_attn']['specificity'] < 1e-6


def test_near_tokens_are_the_projection_and_its_neighbours():
    import numpy as np

    from projects.streampetr.fake_inputs import camera_rig
    from projects.streampetr.query_spread import near_tokens
    h, w = 96, 256  # tokens 6 x 16 at stride 16
    lidar2img = torch.as_tensor(np.stack(camera_rig(h, w)[0]), dtype=torch.float32)[None]
    # 10 m ahead of view 0 on its optical axis: pixel (128, 48), token row 3, column 8; the
    # views at +-60 degrees see it behind their image edges, the others behind them.
    near = near_tokens(torch.tensor([[[10.0, 0.0, 0.0]]]), lidar2img, (6, 16), (h, w))
    expected = {r * 16 + c for r in (2, 3, 4) for c in (7, 8, 9)}
    assert set(near[0, 0].nonzero().flatten().tolist()) == expected
