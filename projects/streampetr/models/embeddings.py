"""Positional encodings and the small conditioning layers of StreamPETR."""
import math

import torch
from torch import nn


def pos2posemb(pos: torch.Tensor, num_pos_feats: int = 128, temperature: int = 10000):
    """Sine/cosine encoding of each coordinate in the last dim, the coordinates' encodings
    concatenated in their order; each is (sin f0, cos f0, sin f1, cos f1, ...)."""
    scale = 2 * math.pi
    pos = pos * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=pos.device)
    dim_t = temperature**(2 * torch.div(dim_t, 2, rounding_mode='floor') / num_pos_feats)
    emb = pos[..., None] / dim_t
    emb = torch.stack((emb[..., 0::2].sin(), emb[..., 1::2].cos()), dim=-1).flatten(-2)
    return emb.flatten(-2)


def pos2posemb3d(pos: torch.Tensor, num_pos_feats: int = 128) -> torch.Tensor:
    """StreamPETR's 3D point encoding: the (y, x, z) encodings concatenated in that order (the
    published weights were trained on it)."""
    return pos2posemb(pos[..., [1, 0, 2]], num_pos_feats)


def nerf_positional_encoding(x: torch.Tensor, num_freqs: int = 6) -> torch.Tensor:
    """NeRF encoding without the raw input: (..., D) -> (..., D * 2 * num_freqs)."""
    freqs = 2.0**torch.linspace(0.0, num_freqs - 1, num_freqs, device=x.device)
    out = [fn(x * f) for f in freqs for fn in (torch.sin, torch.cos)]
    return torch.cat(out, dim=-1)


class MLN(nn.Module):
    """Motion-aware layer norm: the condition vector sets a per-channel affine transform.

    Starts as a plain (non-affine) layer norm: gamma maps to ones, beta to zeros.
    """

    def __init__(self, c_dim: int, f_dim: int = 256):
        super().__init__()
        self.reduce = nn.Sequential(nn.Linear(c_dim, f_dim), nn.ReLU())
        self.gamma = nn.Linear(f_dim, f_dim)
        self.beta = nn.Linear(f_dim, f_dim)
        self.ln = nn.LayerNorm(f_dim, elementwise_affine=False)
        nn.init.zeros_(self.gamma.weight)
        nn.init.ones_(self.gamma.bias)
        nn.init.zeros_(self.beta.weight)
        nn.init.zeros_(self.beta.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = self.reduce(c)
        return self.gamma(c) * self.ln(x) + self.beta(c)


class SELayerLinear(nn.Module):
    """Squeeze-excitation gate of the position embedding by the image features."""

    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Linear(channels, channels)
        self.act = nn.ReLU()
        self.expand = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, x_se: torch.Tensor) -> torch.Tensor:
        return x * self.expand(self.act(self.reduce(x_se))).sigmoid()


def transform_points(points: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """Apply per-batch 4x4 transforms: points (B, Q, 3), mat (B, 4, 4)."""
    mat = mat.to(points.dtype)
    return points @ mat[:, :3, :3].transpose(1, 2) + mat[:, None, :3, 3]
