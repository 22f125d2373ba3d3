"""PETR's temporal decoder: post-norm layers of self-attention over [queries; memory],
cross-attention to the image tokens and an FFN, computed with PyTorch's fused SDPA kernels."""
import torch
import torch.utils.checkpoint as cp
import torch.nn.functional as F
from mmdet3d.registry import MODELS
from mmengine.model import BaseModule
from torch import nn


class SDPAttention(nn.Module):
    """Multi-head attention through `F.scaled_dot_product_attention` (no flash-attn package).

    `blocked` follows nn.MultiheadAttention: True marks a pair that may NOT attend.
    """

    def __init__(self, embed_dims: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(embed_dims, embed_dims)
        self.k_proj = nn.Linear(embed_dims, embed_dims)
        self.v_proj = nn.Linear(embed_dims, embed_dims)
        self.out_proj = nn.Linear(embed_dims, embed_dims)

    def _heads(self, x):
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q, k, v, blocked=None):
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        mask = None if blocked is None else ~blocked  # SDPA: True means attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class TemporalDecoderLayer(nn.Module):

    def __init__(self, embed_dims=256, num_heads=8, ffn_dims=2048, dropout=0.1,
                 cross_attn_drop=0.0):
        super().__init__()
        self.self_attn = SDPAttention(embed_dims, num_heads, dropout)
        self.cross_attn = SDPAttention(embed_dims, num_heads, cross_attn_drop)
        self.ffn = nn.Sequential(
            nn.Linear(embed_dims, ffn_dims), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(ffn_dims, embed_dims))
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, query, query_pos, img_feats, img_pos, temp_memory, temp_pos, blocked):
        if temp_memory is not None:
            key, key_pos = torch.cat([query, temp_memory], 1), torch.cat([query_pos, temp_pos], 1)
        else:
            key, key_pos = query, query_pos
        x = query + self.drop(self.self_attn(query + query_pos, key + key_pos, key, blocked))
        x = self.norms[0](x)
        x = self.norms[1](x + self.drop(self.cross_attn(x + query_pos, img_feats + img_pos,
                                                        img_feats)))
        return self.norms[2](x + self.drop(self.ffn(x)))


@MODELS.register_module()
class StreamTemporalDecoder(BaseModule):
    """Stack of decoder layers; returns every layer's output after a shared final norm.

    `dropout` acts on the residual branches, the FFN's hidden layer and the self-attention
    probabilities; `cross_attn_drop` on the cross-attention probabilities (0 in the published
    model: its flash-attention wrapper passed the 0.1 as the `bias` flag). `with_cp` recomputes
    each layer in backward (training only) to save activation memory."""

    def __init__(self, num_layers=6, embed_dims=256, num_heads=8, ffn_dims=2048, dropout=0.1,
                 cross_attn_drop=0.0, with_cp=False, init_cfg=None):
        super().__init__(init_cfg)
        self.with_cp = with_cp
        self.layers = nn.ModuleList(
            TemporalDecoderLayer(embed_dims, num_heads, ffn_dims, dropout, cross_attn_drop)
            for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(embed_dims)

    def init_weights(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, query, query_pos, img_feats, img_pos, temp_memory=None, temp_pos=None,
                blocked=None):
        outs = []
        args = (query_pos, img_feats, img_pos, temp_memory, temp_pos, blocked)
        for layer in self.layers:
            if self.with_cp and self.training:
                query = cp.checkpoint(layer, query, *args, use_reentrant=False)
            else:
                query = layer(query, *args)
            outs.append(self.post_norm(query))
        return torch.stack(outs)
