"""Model dimensions and presets. Pure Python (no torch): the operator validates specs against these."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

CONDITION_ATTENTION = ("full", "causal")


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of the MM-DiT. Token counts come from the data, not from here."""

    hidden_size: int = 64
    depth: int = 4  # number of transformer blocks
    num_heads: int = 4
    mlp_ratio: float = 4.0
    latent_channels: int = 4  # channels of the video VAE latent
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) patchify of the latent
    text_dim: int = 32  # width of the pre-encoded text embedding
    frequency_embedding_size: int = 64  # sinusoidal timestep embedding width
    qk_norm: bool = True
    # "full": every token of a sample attends to all of it. "causal": condition tokens (text, reference, context)
    # attend only to their sample's condition tokens and are modulated as clean (t = 0): the view in which serving's
    # condition key/value cache is exact (omnitrain/model/condcache.py).
    condition_attention: str = "full"

    def __post_init__(self):
        if self.condition_attention not in CONDITION_ATTENTION:
            raise ValueError(
                f"spec.model.conditionAttention: {self.condition_attention!r} is not one of {CONDITION_ATTENTION}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        pt, ph, pw = self.patch_size
        return self.latent_channels * pt * ph * pw

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        if d["condition_attention"] == "full":
            # Written only when not the default: a full-attention model's dict (its checkpoint fingerprint, its
            # model files) stays what it was before the field existed, so existing checkpoints resume.
            del d["condition_attention"]
        return d


PRESETS: dict[str, ModelConfig] = {
    # Seconds per step on one CPU core: tests and the demo.
    "tiny": ModelConfig(hidden_size=64, depth=4, num_heads=4, latent_channels=4, text_dim=32),
    "small": ModelConfig(hidden_size=384, depth=12, num_heads=6, latent_channels=16, text_dim=256),
    "1b": ModelConfig(
        hidden_size=2048, depth=24, num_heads=16, latent_channels=16, text_dim=4096, frequency_embedding_size=256
    ),
    # Dimensions of the public 14B video DiTs (40 layers, 5120 wide, 40 heads, 16-channel latents).
    "14b": ModelConfig(
        hidden_size=5120,
        depth=40,
        num_heads=40,
        mlp_ratio=3.5,
        latent_channels=16,
        text_dim=4096,
        frequency_embedding_size=256,
    ),
}

# Fields a spec may override on top of a preset (camelCase in the CRD, snake_case here).
OVERRIDABLE = (
    "hidden_size",
    "depth",
    "num_heads",
    "mlp_ratio",
    "latent_channels",
    "patch_size",
    "text_dim",
    "condition_attention",
)


def resolve_model_config(preset: str | None, overrides: dict | None = None) -> ModelConfig:
    """A preset (default `tiny`) with explicit dimensions applied on top."""
    name = preset or "tiny"
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    changes = {k: v for k, v in (overrides or {}).items() if v is not None and k in OVERRIDABLE}
    if "patch_size" in changes:
        changes["patch_size"] = tuple(changes["patch_size"])
    return replace(PRESETS[name], **changes)


__all__ = ["CONDITION_ATTENTION", "ModelConfig", "PRESETS", "resolve_model_config"]
