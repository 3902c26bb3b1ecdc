"""What one generation request conditions on, as tokens (pre-encoded text, patchified reference-image and
video-context latents), and the latent <-> token conversion at the API boundary."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Conditions:
    text: torch.Tensor                        # [Lt, text_dim] pre-encoded text embedding
    reference: torch.Tensor | None = None     # [Lr, patch_dim] reference-image tokens
    context: torch.Tensor | None = None       # [Lc, patch_dim] video-context tokens
    # Patch grids (t, h, w) of the latents, for models with 3D positions (MMDiT); None where not needed.
    reference_grid: tuple[int, int, int] | None = None
    context_grid: tuple[int, int, int] | None = None
    video_grid: tuple[int, int, int] | None = None

    def without_text(self) -> "Conditions":
        """The unconditional branch of classifier-free guidance: the text dropped (a zero embedding, as training
        drops it), the visual conditions kept."""
        return replace(self, text=torch.zeros_like(self.text))

    @property
    def num_tokens(self) -> int:
        return sum(0 if t is None else t.shape[0] for t in (self.text, self.reference, self.context))


def patchify(latent: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """[C, T, H, W] -> [T/pt * H/ph * W/pw, C*pt*ph*pw] (t-major token order)."""
    c, t, h, w = latent.shape
    pt, ph, pw = patch_size
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent shape {(c, t, h, w)} is not divisible by the patch size {patch_size}")
    x = latent.reshape(c, t // pt, pt, h // ph, ph, w // pw, pw)
    return x.permute(1, 3, 5, 0, 2, 4, 6).reshape((t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(tokens: torch.Tensor, shape: tuple[int, int, int, int],
               patch_size: tuple[int, int, int]) -> torch.Tensor:
    """The inverse of patchify for a latent of `shape` [C, T, H, W]."""
    c, t, h, w = shape
    pt, ph, pw = patch_size
    x = tokens.reshape(t // pt, h // ph, w // pw, c, pt, ph, pw)
    return x.permute(3, 0, 4, 1, 5, 2, 6).reshape(c, t, h, w)


__all__ = ["Conditions", "patchify", "unpatchify"]
