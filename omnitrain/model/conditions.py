"""What one generation request conditions on, as tokens (pre-encoded text, patchified reference-image and
video-context latents; omnitrain.model.patchify converts latents and tokens)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Conditions:
    text: torch.Tensor  # [Lt, text_dim] pre-encoded text embedding
    reference: torch.Tensor | None = None  # [Lr, patch_dim] reference-image tokens
    context: torch.Tensor | None = None  # [Lc, patch_dim] video-context tokens
    # Patch grids (t, h, w) of the latents, for models with 3D positions (MMDiT); None where not needed.
    reference_grid: tuple[int, int, int] | None = None
    context_grid: tuple[int, int, int] | None = None
    video_grid: tuple[int, int, int] | None = None

    def without_text(self) -> Conditions:
        """The unconditional branch of classifier-free guidance: the text dropped (a zero embedding, as training
        drops it), the visual conditions kept."""
        return replace(self, text=torch.zeros_like(self.text))

    @property
    def num_tokens(self) -> int:
        return sum(0 if t is None else t.shape[0] for t in (self.text, self.reference, self.context))


__all__ = ["Conditions"]
