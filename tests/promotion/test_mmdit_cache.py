"""Condition caching on the real MMDiT (through the adapter): cached sampling equals uncached sampling under the
same mask, with text, reference-image and video-context conditions."""

import torch

from omnitrain.model.conditions import Conditions
from omnitrain.model.config import ModelConfig
from omnitrain.model.denoiser import Denoiser
from omnitrain.model.mmdit import MMDiT, randomize_
from omnitrain.model.mmdit_adapter import build_mmdit
from omnitrain.model.sampling import SamplerConfig

CFG = ModelConfig(hidden_size=32, depth=2, num_heads=4, latent_channels=4, text_dim=16, frequency_embedding_size=32)


def _model(seed=0):
    torch.manual_seed(seed)
    model, adapter = build_mmdit(CFG)
    randomize_(model, torch.Generator().manual_seed(seed))  # adaLN-Zero starts at zero: make blocks do something
    return model.eval(), adapter


def _requests(g):
    p = CFG.patch_dim
    conds = [
        Conditions(text=torch.randn(5, CFG.text_dim, generator=g), video_grid=(2, 2, 2)),
        Conditions(
            text=torch.randn(3, CFG.text_dim, generator=g),
            reference=torch.randn(4, p, generator=g),
            reference_grid=(1, 2, 2),
            context=torch.randn(8, p, generator=g),
            context_grid=(2, 2, 2),
            video_grid=(2, 2, 3),
        ),
    ]
    noise = [torch.randn(8, p, generator=g), torch.randn(12, p, generator=g)]
    return conds, noise


def test_cached_sampling_equals_uncached_on_mmdit():
    model, adapter = _model()
    den = Denoiser(model, adapter)
    conds, noise = _requests(torch.Generator().manual_seed(0))
    cfg = SamplerConfig(steps=5, method="heun", shift=2.0, guidance=2.5)
    a = den.generate(conds, noise, cfg, mode="masked")
    b = den.generate(conds, noise, cfg, mode="cached")
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(torch.cat(a), torch.cat(noise))


def test_a_trained_mmdit_state_dict_loads_and_conditions_matter():
    torch.manual_seed(1)
    plain = randomize_(MMDiT(CFG), torch.Generator().manual_seed(1))
    model, adapter = build_mmdit(CFG)
    model.load_state_dict(plain.state_dict())  # same parameter names
    den = Denoiser(model.eval(), adapter)
    conds, noise = _requests(torch.Generator().manual_seed(2))
    with torch.no_grad():
        v = den.velocity_masked(conds, noise, 0.5)
        other = [Conditions(text=torch.randn(5, CFG.text_dim), video_grid=(2, 2, 2))] + conds[1:]
        w = den.velocity_masked(other, noise, 0.5)
    assert not torch.allclose(v[0], w[0]) and torch.allclose(v[1], w[1])
