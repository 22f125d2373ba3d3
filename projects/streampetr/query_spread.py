"""How much StreamPETR's queries differ from each other, stage by stage.

A query-based detector whose queries all compute the same thing predicts the same class score
for every query: its classification loss sits on a plateau and mAP stays 0 however well its
boxes' mean fits. In StreamPETR the queries start with zero content and differ only by the
position embedding of their reference points, which reaches the outputs through the attention
weights alone, so this can happen. These figures tell it apart from a detector that merely has
not learned yet:

- `query_pos`: relative spread over queries of the decoder's query position embedding
  (per channel std over queries, averaged, over the rms);
- per decoder layer and attention: entropy of the attention (nats; log K is uniform) and its
  query specificity, the mean total-variation distance between a query's attention and the
  queries' mean attention (0: every query attends alike, 1: disjoint);
- per cross-attention its geometric lift: the attention mass on the image tokens within one
  token of where the query's reference point projects (in any view it lies in front of), over
  the share of such tokens among all (1: attention ignores where the query is; above 1: the
  position embeddings of queries and image tokens have come to agree);
- `decoder_out`: relative spread over queries of the last layer's output;
- `score_std`: std over queries of the top class score (sigmoid).
The learnable queries only (denoising queries are a training device); memory emptied first.
"""
import math

import torch


def _relative_spread(x: torch.Tensor) -> float:
    """x (..., Q, C): mean over channels of the std over queries, over the rms."""
    x = x.reshape(-1, x.shape[-2], x.shape[-1])
    return float(x.std(1).mean() / x.pow(2).mean().sqrt().clamp_min(1e-12))


def near_tokens(points, lidar2img, feat_hw, pad_hw) -> torch.Tensor:
    """(B, Q, N*h*w) bool: the image tokens (in the head's order: view, row, column) within one
    token of the projection of each point (B, Q, 3), in every view it lies in front of."""
    (h, w), (pad_h, pad_w) = feat_hw, pad_hw
    homo = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    cam = torch.einsum('bnij,bqj->bnqi', lidar2img, homo)  # (B, N, Q, 4)
    depth = cam[..., 2]
    uv = cam[..., :2] / depth.clamp_min(1e-5)[..., None]
    # The token holding the projection and its eight neighbours.
    col = torch.floor(uv[..., 0] * w / pad_w)
    row = torch.floor(uv[..., 1] * h / pad_h)
    rows = torch.arange(h, dtype=points.dtype)
    cols = torch.arange(w, dtype=points.dtype)
    near = (((rows.view(1, 1, 1, h, 1) - row[..., None, None]).abs() <= 1)
            & ((cols.view(1, 1, 1, 1, w) - col[..., None, None]).abs() <= 1)
            & (depth > 0)[..., None, None])  # (B, N, Q, h, w)
    return near.permute(0, 2, 1, 3, 4).flatten(2)


def _attention_stats(attn, q, k, near=None) -> dict:
    """Entropy and query specificity of the softmax attention of `attn` (SDPAttention), and
    with `near` (B, Q, K) its geometric lift."""
    qh, kh = attn._heads(attn.q_proj(q)), attn._heads(attn.k_proj(k))
    p = (qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1])).softmax(-1)  # (B, H, Q, K)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
    tv = 0.5 * (p - p.mean(2, keepdim=True)).abs().sum(-1).mean()
    stats = dict(entropy=float(entropy), uniform_entropy=math.log(kh.shape[2]),
                 specificity=float(tv))
    if near is not None:
        seen = near.any(-1)  # queries in front of some camera
        mass = (p.mean(1) * near).sum(-1)[seen]
        share = near.float().mean(-1)[seen]
        stats['lift'] = float(mass.mean() / share.mean())
    return stats


@torch.no_grad()
def query_spread(model, batch) -> dict:
    """The figures above for one preprocessed batch (`model.data_preprocessor(data)`)."""
    head = model.pts_bbox_head
    q = head.num_query
    seen, hooks = {}, []
    # The decoder layer's own inputs, so the figures are those of its real forward.
    def layer_hook(index):
        def hook(layer, args):
            query, query_pos, img_feats, img_pos, temp_memory, temp_pos, _ = args
            key, key_pos = ((torch.cat([query, temp_memory], 1), torch.cat([query_pos, temp_pos], 1))
                            if temp_memory is not None else (query, query_pos))
            seen[f'layer{index}.self_attn'] = _attention_stats(
                layer.self_attn, (query + query_pos)[:, :q], key + key_pos)
            # The cross-attention's query is the output of self-attention and its norm.
            x = layer.norms[0](query + layer.self_attn(query + query_pos, key + key_pos, key))
            seen[f'layer{index}.cross_attn'] = _attention_stats(
                layer.cross_attn, (x + query_pos)[:, :q], img_feats + img_pos, near)
            if index == 0:
                seen['query_pos'] = _relative_spread(query_pos[:, :q])
        return hook
    for i, layer in enumerate(head.decoder.layers):
        hooks.append(layer.register_forward_pre_hook(layer_hook(i)))
    hooks.append(head.decoder.register_forward_hook(
        lambda m, a, out: seen.update(decoder_out=_relative_spread(out[-1][:, :q]))))
    try:
        model.reset_memory()
        imgs = batch['inputs']['imgs']
        feats = model.extract_feat(imgs)
        frame = model._frame(imgs, batch['data_samples'])
        ref = head.learnable_reference_points()
        points = ref * (head.pc_range[3:] - head.pc_range[:3]) + head.pc_range[:3]
        near = near_tokens(points.expand(feats.size(0), -1, -1), frame['lidar2img'],
                           feats.shape[-2:], frame['pad_shape'])
        cls_scores, _, _ = head(feats, frame)
    finally:
        for h in hooks:
            h.remove()
    seen['score_std'] = float(cls_scores[-1][:, :q].sigmoid().max(-1).values.std(1).mean())
    return seen
