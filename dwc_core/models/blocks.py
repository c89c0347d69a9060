"""Building blocks of DWC's CNN stream (dwc-method.md §2.3): Inception blocks (2-D over regions, 1-D over words)
and generalised-mean (GeM) pooling with a learnable exponent."""

from __future__ import annotations

import torch
from torch import nn

from dwc_core.errors import ConfigError


def _conv_bn(dims: int, cin: int, cout: int, kernel: int) -> list[nn.Module]:
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return [conv(cin, cout, kernel, padding=kernel // 2, bias=False), bn(cout)]


class _Inception(nn.Module):
    """Four branches of conv(no bias)+BN, concatenated to ``out_channels`` (no final activation):

    b0: 1×1 → 3C/8 · b1: 1×1 → C/2, ReLU, 3×3 → C/4 · b2: 1×1 → C/4, ReLU, 3×3 → C/8, ReLU, 3×3 → C/4 ·
    b3: 3×3 average pool (stride 1, pad 1, padding excluded from the mean) → 1×1 → C/8.
    """

    dims = 2

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        c = out_channels
        if c % 8:
            raise ConfigError(f"Inception block: output channels must be a multiple of 8, got {c}.")
        d = self.dims
        self.branch0 = nn.Sequential(*_conv_bn(d, in_channels, 3 * c // 8, 1))
        self.branch1 = nn.Sequential(
            *_conv_bn(d, in_channels, c // 2, 1), nn.ReLU(inplace=True), *_conv_bn(d, c // 2, c // 4, 3)
        )
        self.branch2 = nn.Sequential(
            *_conv_bn(d, in_channels, c // 4, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(d, c // 4, c // 8, 3),
            nn.ReLU(inplace=True),
            *_conv_bn(d, c // 8, c // 4, 3),
        )
        pool = nn.AvgPool2d if d == 2 else nn.AvgPool1d
        self.branch3 = nn.Sequential(
            pool(3, stride=1, padding=1, count_include_pad=False), *_conv_bn(d, in_channels, c // 8, 1)
        )
        self.out_channels = c

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (N, 1, *spatial) of 0/1 makes masked positions behave like the zero padding beyond the edge:
        inputs and every intermediate activation are zeroed there and the average pool ignores them."""
        branches = (self.branch0, self.branch1, self.branch2, self.branch3)
        if mask is None:
            return torch.cat([branch(x) for branch in branches], dim=1)
        mask = mask.to(x.dtype)
        x = x * mask
        return torch.cat([self._masked(branch, x, mask) for branch in branches], dim=1) * mask

    @staticmethod
    def _masked(branch: nn.Sequential, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in branch:
            if isinstance(layer, nn.AvgPool1d | nn.AvgPool2d):
                x = layer(x) / layer(mask).clamp(min=1e-6)  # x is already zero where masked
            else:
                x = layer(x)
            if isinstance(layer, nn.AvgPool1d | nn.AvgPool2d | nn.BatchNorm1d | nn.BatchNorm2d):
                x = x * mask
        return x


class Inception2d(_Inception):
    """Inception block over a feature map (N, C_in, H, W) → (N, C_out, H, W)."""

    dims = 2


class Inception1d(_Inception):
    """Inception block over a sequence (N, C_in, L) → (N, C_out, L); kernel 3 runs along the words."""

    dims = 1


class GeM(nn.Module):
    """Generalised-mean pooling over every dimension after the channel one: (mean x^p)^(1/p), x clamped to ≥ eps.

    p is learnable (init 3). ``mask`` (N, *spatial) of 0/1 restricts the mean to the marked positions.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.clamp(min=self.eps).pow(self.p)
        flat = x.flatten(2)  # (N, C, positions)
        if mask is None:
            pooled = flat.mean(dim=2)
        else:
            m = mask.flatten(1).to(flat.dtype).unsqueeze(1)  # (N, 1, positions)
            pooled = (flat * m).sum(dim=2) / m.sum(dim=2).clamp(min=1.0)
        return pooled.pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4f}, eps={self.eps}"


__all__ = ["GeM", "Inception1d", "Inception2d"]
