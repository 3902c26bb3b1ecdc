import pytest
import torch

from omnitrain.model.denoiser import Denoiser
from omnitrain.model.sampling import SamplerConfig
from tests.promotion.helpers import random_conditions, tiny_model


def _requests(g):
    conds = [
        random_conditions(g, text=5),
        random_conditions(g, text=3, reference=4),
        random_conditions(g, text=4, reference=4, context=8),
    ]
    noise = [torch.randn(n, 16, generator=g) for n in (8, 12, 6)]
    return conds, noise


def test_cached_step_equals_masked_step():
    model, adapter = tiny_model()
    den = Denoiser(model, adapter)
    conds, videos = _requests(torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = den.encode_conditions(conds)
        assert cache.layers == len(model.blocks)
        for s in (0.9, 0.3):
            masked = den.velocity_masked(conds, videos, s)
            cached = den.velocity_cached(conds, videos, s, cache)
            for a, b in zip(masked, cached):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,guidance", [("euler", 1.0), ("heun", 3.0)])
def test_cached_sampling_equals_uncached_sampling(method, guidance):
    model, adapter = tiny_model(seed=3)
    den = Denoiser(model, adapter)
    conds, noise = _requests(torch.Generator().manual_seed(1))
    cfg = SamplerConfig(steps=6, method=method, shift=2.0, guidance=guidance)
    uncached = den.generate(conds, noise, cfg, mode="masked")
    cached = den.generate(conds, noise, cfg, mode="cached")
    for a, b in zip(uncached, cached):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(torch.cat(uncached), torch.cat(noise))


def test_mask_keeps_conditions_blind_to_video_but_video_sees_conditions():
    model, adapter = tiny_model(seed=4)
    den = Denoiser(model, adapter)
    g = torch.Generator().manual_seed(2)
    conds, videos = _requests(g)
    other_conds = [random_conditions(g, text=c.text.shape[0]) for c in conds[:1]] + conds[1:]
    with torch.no_grad():
        a = den.velocity_masked(conds, videos, 0.5)
        b = den.velocity_masked(other_conds, videos, 0.5)
    assert not torch.allclose(a[0], b[0])  # the text changes the first sample's video prediction
    torch.testing.assert_close(a[1], b[1])  # and nothing else: samples stay separate


def test_replay_with_a_cache_of_other_requests_fails_clearly():
    model, adapter = tiny_model()
    den = Denoiser(model, adapter)
    conds, videos = _requests(torch.Generator().manual_seed(0))
    cache = den.encode_conditions(conds[:2])
    with pytest.raises(RuntimeError, match="condition cache does not match"):
        den.velocity_cached(conds, videos, 0.5, cache)
