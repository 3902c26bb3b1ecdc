"""3D patchify of video latents [C, T, H, W] into tokens [N, C*pt*ph*pw] and back, plus each token's grid position."""

from __future__ import annotations

import torch


def patch_grid(shape: tuple[int, ...], patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """Tokens along (t, h, w) for a latent of shape [C, T, H, W]; the latent must divide into whole patches."""
    _, t, h, w = shape
    pt, ph, pw = patch_size
    if t % pt or h % ph or w % pw:
        raise ValueError(
            f"latent of shape {list(shape)} does not divide into patches {list(patch_size)}; "
            "pad or crop the latent to a multiple of model.patchSize"
        )
    return t // pt, h // ph, w // pw


def patchify(latent: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """[C, T, H, W] -> [T'*H'*W', C*pt*ph*pw], tokens in (t, h, w) raster order."""
    c = latent.shape[0]
    gt, gh, gw = patch_grid(tuple(latent.shape), patch_size)
    pt, ph, pw = patch_size
    x = latent.reshape(c, gt, pt, gh, ph, gw, pw)
    x = x.permute(1, 3, 5, 0, 2, 4, 6)  # grid first, then the patch's own (c, pt, ph, pw)
    return x.reshape(gt * gh * gw, c * pt * ph * pw)


def unpatchify(
    tokens: torch.Tensor, grid: tuple[int, int, int], patch_size: tuple[int, int, int], channels: int
) -> torch.Tensor:
    """Inverse of patchify: [T'*H'*W', C*pt*ph*pw] -> [C, T, H, W]."""
    gt, gh, gw = grid
    pt, ph, pw = patch_size
    x = tokens.reshape(gt, gh, gw, channels, pt, ph, pw)
    x = x.permute(3, 0, 4, 1, 5, 2, 6)
    return x.reshape(channels, gt * pt, gh * ph, gw * pw)


def grid_positions(grid: tuple[int, int, int], t_offset: int = 0) -> torch.Tensor:
    """[T'*H'*W', 3] float (t, h, w) positions of patchify's raster order."""
    gt, gh, gw = grid
    t, h, w = torch.meshgrid(torch.arange(gt) + t_offset, torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.stack((t, h, w), dim=-1).reshape(-1, 3).float()
