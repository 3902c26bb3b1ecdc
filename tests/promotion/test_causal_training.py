"""spec.model.conditionAttention: causal makes serving's condition cache exact for the TRAINED model: an MMDiT
trained a few steps by the real training loop and saved by the real checkpoint callback, served from its
checkpoint folder by the inference engine, gives with cached condition keys/values (record once, replay per step)
the velocities of the uncached forward of the model the loop trained, at every step of a sampling; trained with
full attention the same comparison differs (so the check can fail), and the engine says which case it serves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from omnitrain.model.conditions import Conditions
from omnitrain.model.packing import VIDEO
from omnitrain.model.sampling import timesteps
from omnitrain.serving.engine import InferenceEngine
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.checkpoint.callback import CheckpointCallback
from omnitrain.trainer.train import train

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from train_helpers import config_dict  # noqa: E402

STEPS = 12


def _train(root: Path, mode: str):
    data = config_dict(root, steps=STEPS)
    data["spec"]["model"] = {"preset": "tiny", "conditionAttention": mode}
    data["spec"]["data"]["path"] = str(root.parent / "data")  # one synthetic dataset for both modes
    config_path = root / "trainer.yaml"
    root.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(data))
    config = TrainerConfig.model_validate(data)
    torch.set_num_threads(1)
    result = train(config, callbacks=[CheckpointCallback.from_trainer_config(config)], log=lambda *a, **k: None)
    assert result.checkpoint_step == STEPS
    engine = InferenceEngine(
        str(root / "local" / "looptest"), fp8=False, config_path=str(config_path)
    )  # the job's checkpoint folder, as `omnitrain serve` gets it without distillation
    engine.load()
    assert engine.loaded.is_set(), engine.load_error
    return result.state.model.eval(), engine


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal-training")
    return {mode: _train(root / mode, mode) for mode in ("causal", "full")}


def _requests(cfg, g):
    p = cfg.patch_dim
    conds = [
        Conditions(text=torch.randn(5, cfg.text_dim, generator=g), video_grid=(2, 2, 2)),
        Conditions(
            text=torch.randn(3, cfg.text_dim, generator=g),
            reference=torch.randn(4, p, generator=g),
            reference_grid=(1, 2, 2),
            context=torch.randn(8, p, generator=g),
            context_grid=(2, 2, 2),
            video_grid=(2, 2, 3),
        ),
    ]
    return conds, [torch.randn(8, p, generator=g), torch.randn(12, p, generator=g)]


def _cached_vs_trained(model, engine) -> float:
    """Largest relative difference, over an Euler sampling's steps, between the served cached velocity and the
    trained model's own uncached forward over the full sequences (conditions + video)."""
    den = engine.denoiser
    conds, xs = _requests(engine.config, torch.Generator().manual_seed(3))
    worst = 0.0
    with torch.no_grad():
        cache = den.encode_conditions(conds)  # once per request, as the server does
        levels = timesteps(6, 1.0)
        for s, s_next in zip(levels[:-1], levels[1:]):
            batch, _ = den.adapter.full_batch(conds, xs)
            trained_v = model(batch, torch.full((len(conds),), float(s)))[batch.kind == VIDEO]
            cached_v = torch.cat(den.velocity_cached(conds, xs, s, cache))
            worst = max(worst, float((cached_v - trained_v).abs().max() / trained_v.abs().max()))
            xs = list((torch.cat(xs) + (s_next - s) * trained_v).split([x.shape[0] for x in xs]))  # Euler
    return worst


@pytest.mark.timeout(600)
def test_causal_training_makes_the_served_cache_exact(trained):
    model, engine = trained["causal"]
    assert engine.config.condition_attention == "causal"  # the checkpoint's config reached the server
    assert engine.cache.exact and "causal" in engine.cache.reason
    assert engine.metrics.condition_cache_exact._value.get() == 1
    assert _cached_vs_trained(model, engine) < 1e-4  # float tolerance (measured: 0, the same sums in the same order)


@pytest.mark.timeout(600)
def test_full_attention_training_is_not_what_the_cache_serves(trained):
    model, engine = trained["full"]
    assert not engine.cache.exact and "conditionAttention: causal" in engine.cache.reason
    assert _cached_vs_trained(model, engine) > 1e-3  # 40x the exact case's bound after 12 steps (measured 4e-3)
