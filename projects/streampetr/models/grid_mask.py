"""GridMask augmentation of the camera images (training only), as StreamPETR trains with it:
with probability `prob`, one grid of square cells (period d drawn in [2, H), band width
ratio * d) is drawn for the whole batch; `keep_bands=True` keeps the pixels on the grid's
row or column bands and zeroes the cells between them (the published mode 1). It draws from
torch's RNG, so a caller that reseeds torch (JointPruning's sub-network losses) gets the same
mask again."""
import numpy as np
import torch
from torch import nn


def _bands(length: int, period: int, start: int, width: int) -> np.ndarray:
    """Boolean (length,): positions inside one of the length // period bands [s, s + width),
    s = start + k * period."""
    on = np.zeros(length, dtype=bool)
    for k in range(length // period):
        s = start + k * period
        on[s:min(s + width, length)] = True
    return on


class GridMask(nn.Module):

    def __init__(self, use_h=True, use_w=True, ratio=0.5, keep_bands=True, prob=0.7):
        super().__init__()
        self.use_h, self.use_w, self.ratio = use_h, use_w, ratio
        self.keep_bands, self.prob = keep_bands, prob

    def mask(self, h: int, w: int) -> np.ndarray:
        """One random (h, w) 0/1 mask. The grid is laid on a 1.5x larger canvas and the centre
        cut out, so that the grid's phase varies across the image."""
        hh, ww = int(1.5 * h), int(1.5 * w)
        d = int(torch.randint(2, h, ()))
        width = min(max(int(d * self.ratio + 0.5), 1), d - 1)
        st_h, st_w = int(torch.randint(d, ())), int(torch.randint(d, ()))
        on = np.zeros((hh, ww), dtype=bool)
        if self.use_h:
            on |= _bands(hh, d, st_h, width)[:, None]
        if self.use_w:
            on |= _bands(ww, d, st_w, width)[None, :]
        top, left = (hh - h) // 2, (ww - w) // 2
        on = on[top:top + h, left:left + w]
        return (on if self.keep_bands else ~on).astype(np.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H, W); the same mask for every image and channel."""
        if not self.training or float(torch.rand(())) > self.prob:
            return x
        m = torch.from_numpy(self.mask(*x.shape[-2:])).to(x)
        return x * m
