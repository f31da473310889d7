"""Fixed 2-D sin-cos position embeddings (MAE, He et al. 2022; after "Attention is all you need").

Half of the channels encode the column (x) coordinate, the other half the row (y); each half is
[sin(pos * omega), cos(pos * omega)] with omega_k = 1 / 10000^(k / (D/4)), k = 0..D/4-1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos: [M] positions -> [M, dim] = [sin(pos * omega), cos(pos * omega)]."""
    if dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    out = pos.double().reshape(-1, 1) * omega.reshape(1, -1)  # [M, dim/2]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int | Sequence[int], cls_token: bool = False) -> torch.Tensor:
    """Position embeddings for an h x w patch grid, row-major like the patch sequence.

    Returns [h*w, dim] float32, or [1 + h*w, dim] with a leading zero row for the class token.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    rows, cols = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
