"""Official checkpoint conversion: the official key manifest, the converter's mapping and errors,
and the converted head's outputs against the official formulas re-implemented here, in float64,
over three frames with the memory in use."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmdet3d.registry import MODELS
from mmengine.registry import init_default_scope

from mmdp.config_utils import load_config
from projects.streampetr.fake_inputs import camera_rig
from projects.streampetr.models.official_checkpoint import convert_state_dict

DENSE = 'configs/streampetr_r50_704_dense.py'
MANIFEST = 'tests/data/official_streampetr_r50_keys.json'
BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')
H = 'pts_bbox_head.'


def manifest():
    with open(MANIFEST) as f:
        return json.load(f)


def official_constants():
    """The official 428q_nui_60e head's frozen nn.Parameters (config lines 10, 88-97; LID bins)."""
    idx = torch.arange(64, dtype=torch.float32)
    code = torch.tensor([2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    return {H + 'code_weights': code, H + 'match_costs': code.clone(),
            H + 'pc_range': torch.tensor([-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]),
            H + 'position_range': torch.tensor([-61.2, -61.2, -10.0, 61.2, 61.2, 10.0]),
            H + 'coords_d': 1.0 + (torch.tensor(61.2) - 1.0) / (64 * 65) * idx * (idx + 1)}


def random_official_state_dict(seed=0):
    """Random weights of the official layout, scaled so that activations stay in range; the
    class and box branches shared by the six layers, as in the official model."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in manifest().items():
        if key.endswith('num_batches_tracked'):
            sd[key] = torch.tensor(7)
        elif key.endswith('running_var'):
            sd[key] = torch.rand(shape, generator=gen) + 0.5
        elif 'reference_points' in key:
            sd[key] = torch.rand(shape, generator=gen)
        elif len(shape) > 1:
            sd[key] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        elif re.search(r'(norms\.\d|post_norm|bn\d|downsample\.1|\.1)\.weight$', key):
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            sd[key] = 0.1 * torch.randn(shape, generator=gen)
    for key in sd:
        m = re.match(r'(.*(cls|reg)_branches\.)[1-5](\..*)', key)
        if m:
            sd[key] = sd[m.group(1) + '0' + m.group(3)]
    sd.update(official_constants())
    return sd


CLASSES = load_config(DENSE).class_names


@pytest.fixture(scope='module')
def dense_model():
    init_default_scope('mmdet3d')
    return MODELS.build(load_config(DENSE).model)


def test_manifest_has_the_official_entries_and_parameter_counts():
    """591 state-dict entries; parameters (buffers left out, shared branches counted once):
    backbone 23,508,032, neck 1,377,024, 3D head 11,187,320, 2D head 1,185,553."""
    keys = manifest()
    assert len(keys) == 591
    counts = {}
    for key, shape in keys.items():
        if key.endswith(BUFFERS) or re.search(r'(cls|reg)_branches\.[1-5]\.', key):
            continue
        part = key.split('.')[0]
        counts[part] = counts.get(part, 0) + math.prod(shape)
    assert counts == {'img_backbone': 23508032, 'img_neck': 1377024,
                      'pts_bbox_head': 11187320, 'img_roi_head': 1185553}
    assert sum(counts.values()) == 37257929


def test_2d_class_channels_follow_the_config_order(dense_model):
    """The official 2D labels are indices into its converter's category tuple; the port's are
    indices into the config's classes: channel 'barrier' (official 9, config 5) must move."""
    official = random_official_state_dict()
    state = convert_state_dict(official, dense_model, CLASSES)
    w, b = official['img_roi_head.cls.weight'], official['img_roi_head.cls.bias']
    assert CLASSES[5] == 'barrier' and CLASSES[2] == 'construction_vehicle'
    assert torch.equal(state['img_roi_head.cls.weight'][5], w[9])
    assert torch.equal(state['img_roi_head.cls.bias'][2], b[4])
    assert torch.equal(state['img_roi_head.cls.weight'][0], w[0])  # car is first in both


def test_random_official_weights_convert_and_load_strictly(dense_model):
    official = random_official_state_dict()
    state = convert_state_dict(official, dense_model, CLASSES)
    result = dense_model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # Every official tensor lands somewhere, and q/k/v are the thirds of the packed in_proj.
    layer = H + 'transformer.decoder.layers.2.attentions.1.attn.'
    q, k, v = official[layer + 'in_proj_weight'].chunk(3)
    cross = dense_model.pts_bbox_head.decoder.layers[2].cross_attn
    assert torch.equal(cross.q_proj.weight, q) and torch.equal(cross.k_proj.weight, k)
    assert torch.equal(cross.v_proj.weight, v)
    assert torch.equal(cross.v_proj.bias, official[layer + 'in_proj_bias'][512:])
    ffn = dense_model.pts_bbox_head.decoder.layers[5].ffn
    assert torch.equal(ffn[3].weight,
                       official[H + 'transformer.decoder.layers.5.ffns.0.layers.1.weight'])
    assert torch.equal(dense_model.pts_bbox_head.featurized_pe.expand.bias,
                       official[H + 'featurized_pe.conv_expand.bias'])
    assert torch.equal(dense_model.img_roi_head.shared_cls[1].weight,
                       official['img_roi_head.shared_cls.1.weight'])
    assert torch.equal(dense_model.img_backbone.layer3[4].bn2.running_var,
                       official['img_backbone.layer3.4.bn2.running_var'])


def run_tool(*args):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, 'tools/convert_official_checkpoint.py', *args],
                          capture_output=True, text=True, env=env)


def test_tool_converts_a_raw_state_dict_and_rejects_another_model(tmp_path):
    official = random_official_state_dict()
    raw = tmp_path / 'raw.pth'
    torch.save(official, raw)
    out = tmp_path / 'out.pth'
    done = run_tool(str(raw), str(out))
    assert done.returncode == 0, done.stderr
    assert len(torch.load(out, weights_only=False)['state_dict']) == 634

    other = dict(official)
    del other['img_roi_head.ltrb.weight']
    other['img_roi_head.box.0.weight'] = torch.zeros(1)
    bad, bad_out = tmp_path / 'bad.pth', tmp_path / 'bad_out.pth'
    torch.save({'state_dict': other}, bad)
    failed = run_tool(str(bad), str(bad_out))
    assert failed.returncode == 1
    assert 'missing keys: img_roi_head.ltrb.weight' in failed.stderr
    assert 'unexpected keys: img_roi_head.box.0.weight' in failed.stderr
    assert 'Traceback' not in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bad.pth', 'out.pth', 'raw.pth']


def test_config_mismatch_and_unshared_branches_are_refused(dense_model):
    official = random_official_state_dict()
    official[H + 'pc_range'] = torch.tensor([-54.0, -54.0, -5.0, 54.0, 54.0, 3.0])
    official[H + 'cls_branches.3.6.bias'] = torch.zeros(10)
    with pytest.raises(ValueError) as err:
        convert_state_dict(official, dense_model, CLASSES)
    assert 'pts_bbox_head.pc_range is [-54.0' in str(err.value)
    assert 'pts_bbox_head.cls_branches.3.6.bias differs from pts_bbox_head.cls_branches.0.6.bias' \
        in str(err.value)


# ---- the official head's forward, written from the official code's formulas ---------------------
def _linear(W, name, x):
    return x @ W[name + '.weight'].T + W[name + '.bias']


def _layer_norm(W, name, x):
    return F.layer_norm(x, x.shape[-1:], W[name + '.weight'], W[name + '.bias'], 1e-5)


def _inverse_sigmoid(x, eps=1e-5):
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _sine(pos, num_feats):
    """positional_encoding.py: per coordinate sin/cos interleaved, dim_t built in float32."""
    dim_t = torch.arange(num_feats, dtype=torch.float32)
    dim_t = (10000**(2 * torch.div(dim_t, 2, rounding_mode='floor') / num_feats)).double()
    x = pos[..., None] * 2 * math.pi / dim_t
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), -1).flatten(-2)


def _posemb3d(pos):
    return torch.cat([_sine(pos[..., 1], 128), _sine(pos[..., 0], 128), _sine(pos[..., 2], 128)],
                     -1)


def _nerf(x):
    return torch.cat([f(x * 2.0**i) for i in range(6) for f in (torch.sin, torch.cos)], -1)


def _mln(W, name, x, c):
    c = F.relu(_linear(W, name + '.reduce.0', c))
    return _linear(W, name + '.gamma', c) * F.layer_norm(x, x.shape[-1:]) + \
        _linear(W, name + '.beta', c)


def _mlp(W, name, x):
    return _linear(W, name + '.2', F.relu(_linear(W, name + '.0', x)))


def _mha(W, name, q, k, v, heads=8):
    wq, wk, wv = W[name + '.in_proj_weight'].chunk(3)
    bq, bk, bv = W[name + '.in_proj_bias'].chunk(3)
    b, nq, c = q.shape

    def split(x):
        return x.view(b, -1, heads, c // heads).transpose(1, 2)

    q, k, v = split(q @ wq.T + bq), split(k @ wk.T + bk), split(v @ wv.T + bv)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), -1)
    out = (att @ v).transpose(1, 2).reshape(b, nq, c)
    return _linear(W, name + '.out_proj', out)


class OfficialHead:
    """streampetr_head.py forward / pre_update_memory / post_update_memory, eval mode, memory
    kept in the global frame between frames as the official code keeps it."""

    def __init__(self, W):
        self.W = {k: v.double() for k, v in W.items()}
        self.memory = None

    def position_embedding(self, img2lidar, focal, h, w, pad):
        W, (pad_h, pad_w) = self.W, pad
        b, n = img2lidar.shape[:2]
        d = W[H + 'coords_d']
        v = torch.arange(h, dtype=torch.float64) * 16 + 8
        u = torch.arange(w, dtype=torch.float64) * 16 + 8
        vv, uu, dd = torch.meshgrid(v / pad_h * pad_h, u / pad_w * pad_w, d, indexing='ij')
        coords = torch.stack([uu * dd, vv * dd, dd, torch.ones_like(dd)], -1)
        pts = torch.einsum('bnij,hwdj->bnhwdi', img2lidar, coords)[..., :3]
        rng = W[H + 'position_range']
        pts = ((pts - rng[:3]) / (rng[3:] - rng[:3])).reshape(b, n * h * w, 64 * 3)
        pos = _mlp(W, H + 'position_encoder', _inverse_sigmoid(pts))
        intrinsic = (focal.abs() / 1e3).repeat(1, h * w, 1)
        cone = torch.cat([intrinsic, pts[..., -3:], pts[..., -90:-87]], -1)
        return pos, cone

    def __call__(self, feats, img2lidar, focal, pad, lidar2global, stamp, prev_exists):
        W = self.W
        b, n, c, h, w = feats.shape
        pc = W[H + 'pc_range']
        x = float(prev_exists)
        if self.memory is None:
            self.memory = dict(emb=torch.zeros(b, 512, 256), ref=torch.zeros(b, 512, 3),
                               ts=torch.zeros(b, 512, 1), pose=torch.zeros(b, 512, 4, 4),
                               velo=torch.zeros(b, 512, 2))
        else:
            m, inv = self.memory, torch.linalg.inv(lidar2global)
            m['ts'] = (m['ts'] + stamp) * x
            m['pose'] = (inv @ m['pose']) * x
            m['ref'] = (m['ref'] @ inv[:3, :3].T + inv[:3, 3]) * x
            m['emb'], m['velo'] = m['emb'] * x, m['velo'] * x
        m = self.memory
        pseudo = W[H + 'pseudo_reference_points.weight'] * (pc[3:] - pc[:3]) + pc[:3]
        m['ref'][:, :128] += (1 - x) * pseudo
        m['pose'][:, :128] += (1 - x) * torch.eye(4)

        memory = feats.permute(0, 1, 3, 4, 2).reshape(b, n * h * w, c)
        pos_embed, cone = self.position_embedding(img2lidar, focal, h, w, pad)
        memory = _mlp(W, H + 'memory_embed', memory)
        memory = _mln(W, H + 'spatial_alignment', memory, cone)
        gate = _linear(W, H + 'featurized_pe.conv_expand',
                       F.relu(_linear(W, H + 'featurized_pe.conv_reduce', memory)))
        pos_embed = pos_embed * gate.sigmoid()

        ref = W[H + 'reference_points.weight'][None].repeat(b, 1, 1)
        query_pos = _mlp(W, H + 'query_embedding', _posemb3d(ref))
        tgt = torch.zeros_like(query_pos)
        temp_ref = (m['ref'] - pc[:3]) / (pc[3:] - pc[:3])
        temp_pos = _mlp(W, H + 'query_embedding', _posemb3d(temp_ref))
        rec = _nerf(torch.cat([torch.zeros(b, 300, 3), torch.eye(4)[:3].flatten().expand(
            b, 300, 12)], -1))
        tgt = _mln(W, H + 'ego_pose_memory', tgt, rec)
        query_pos = _mln(W, H + 'ego_pose_pe', query_pos, rec)
        mm = _nerf(torch.cat([m['velo'], m['ts'], m['pose'][..., :3, :].flatten(-2)], -1))
        temp_pos = _mln(W, H + 'ego_pose_pe', temp_pos, mm)
        temp_memory = _mln(W, H + 'ego_pose_memory', m['emb'], mm)

        def time_emb(t):
            return _layer_norm(W, H + 'time_embedding.1',
                               _linear(W, H + 'time_embedding.0', _sine(t[..., 0], 256)))

        query_pos = query_pos + time_emb(torch.zeros(b, 300, 1))
        temp_pos = temp_pos + time_emb(m['ts'])
        tgt = torch.cat([tgt, temp_memory[:, :128]], 1)
        query_pos = torch.cat([query_pos, temp_pos[:, :128]], 1)
        ref = torch.cat([ref, temp_ref[:, :128]], 1)
        temp_memory, temp_pos = temp_memory[:, 128:], temp_pos[:, 128:]

        q, outs = tgt, []
        for i in range(6):
            L = f'{H}transformer.decoder.layers.{i}.'
            key, key_pos = torch.cat([q, temp_memory], 1), torch.cat([query_pos, temp_pos], 1)
            q = _layer_norm(W, L + 'norms.0',
                            q + _mha(W, L + 'attentions.0.attn', q + query_pos, key + key_pos, key))
            q = _layer_norm(W, L + 'norms.1', q + _mha(W, L + 'attentions.1.attn', q + query_pos,
                                                       memory + pos_embed, memory))
            ffn = _linear(W, L + 'ffns.0.layers.1', F.relu(_linear(W, L + 'ffns.0.layers.0.0', q)))
            q = _layer_norm(W, L + 'norms.2', q + ffn)
            outs.append(_layer_norm(W, H + 'transformer.decoder.post_norm', q))
        cls_all, box_all = [], []
        for i, o in enumerate(outs):
            C, R = f'{H}cls_branches.{i}.', f'{H}reg_branches.{i}.'
            t = F.relu(_layer_norm(W, C + '1', _linear(W, C + '0', o)))
            t = F.relu(_layer_norm(W, C + '4', _linear(W, C + '3', t)))
            cls_all.append(_linear(W, C + '6', t))
            r = _linear(W, R + '4', F.relu(_linear(W, R + '2', F.relu(_linear(W, R + '0', o)))))
            ctr = (r[..., :3] + _inverse_sigmoid(ref)).sigmoid() * (pc[3:] - pc[:3]) + pc[:3]
            box_all.append(torch.cat([ctr, r[..., 3:]], -1))
        cls_all, box_all = torch.stack(cls_all), torch.stack(box_all)

        score = cls_all[-1].sigmoid().max(-1).values
        idx = score.topk(128, dim=1).indices

        def gather(t):
            return torch.gather(t, 1, idx.view(b, 128, *[1] * (t.dim() - 2)).expand(
                -1, -1, *t.shape[2:]))

        new = dict(emb=gather(outs[-1]), ref=gather(box_all[-1][..., :3]),
                   ts=torch.zeros(b, 128, 1), pose=torch.eye(4).expand(b, 128, 4, 4),
                   velo=gather(box_all[-1][..., -2:]))
        for k in new:
            m[k] = torch.cat([new[k], m[k]], 1)[:, :512]
        m['ref'] = m['ref'] @ lidar2global[:3, :3].T + lidar2global[:3, 3]
        m['ts'] = m['ts'] - stamp
        m['pose'] = lidar2global @ m['pose']
        return cls_all, box_all


def _pose(yaw, tx, ty):
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([[c, -s, 0, tx], [s, c, 0, ty], [0, 0, 1, 0.2], [0, 0, 0, 1]],
                        dtype=torch.float64)


def test_converted_head_gives_the_official_outputs_over_three_frames(dense_model):
    official = random_official_state_dict(seed=1)
    dense_model.load_state_dict(convert_state_dict(official, dense_model, CLASSES), strict=True)
    head = dense_model.pts_bbox_head.double().eval()
    head.reset_memory()
    reference = OfficialHead(official)
    h, w, pad = 4, 11, (64, 176)
    lidar2img, cam2img = camera_rig(*pad)
    # Six cameras of distinct focal lengths, so that the intrinsic tiling shows.
    scale = torch.tensor([0.8, 0.9, 1.0, 1.1, 1.2, 1.3], dtype=torch.float64)
    l2i = torch.tensor(np.stack(lidar2img))
    l2i[:, :2] *= scale.view(6, 1, 1)
    img2lidar = torch.linalg.inv(l2i)[None]
    focal = torch.stack([torch.tensor(np.stack(cam2img))[:, 0, 0] * scale] * 2, -1)[None]
    gen = torch.Generator().manual_seed(3)
    poses = [_pose(0.1, 500.0, 300.0), _pose(0.13, 503.5, 300.4), _pose(0.17, 507.1, 300.9)]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            for t, pose in enumerate(poses):
                feats = torch.randn(1, 6, 256, h, w, generator=gen, dtype=torch.float64)
                stamp = 1.5e9 + 0.5 * t
                ref_cls, ref_box = reference(feats, img2lidar, focal, pad, pose, stamp, t > 0)
                motion = torch.linalg.inv(pose) @ poses[t - 1] if t else torch.eye(4)
                frame = dict(img2lidar=img2lidar, focal=focal, pad_shape=pad,
                             valid=torch.tensor([t > 0]), ego_motion=motion[None],
                             dt=torch.tensor([0.5 if t else 0.0]))
                cls, box, _ = head(feats, frame)
                assert (cls - ref_cls).abs().max() < 1e-9, t
                assert (box - ref_box).abs().max() < 1e-9, t
                # The memory is in use: frame t > 0 reads what frame t - 1 left.
                assert t == 0 or head.memory_embedding[:, 128:256].abs().sum() > 0
    finally:
        torch.set_default_dtype(default)
