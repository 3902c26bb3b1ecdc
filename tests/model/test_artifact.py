"""Model files: the factory is always named (nothing defaults to the test model) and files written before the
MMDiT adapter moved to omnitrain.model still load."""

from __future__ import annotations

import pytest
import torch

from omnitrain.model.artifact import MMDIT_FACTORY, ModelArtifact, ModelFileError, load_artifact, load_teacher
from omnitrain.model.config import ModelConfig
from omnitrain.model.mmdit_adapter import build_mmdit

CFG = ModelConfig(hidden_size=32, depth=1, num_heads=4, latent_channels=4, text_dim=8)


def test_the_factory_is_required():
    model, adapter = build_mmdit(CFG)
    with pytest.raises(TypeError, match="factory"):
        ModelArtifact(model=model, adapter=adapter, config=CFG)  # type: ignore[call-arg]


def test_files_naming_the_old_adapter_module_still_load(tmp_path):
    torch.manual_seed(0)
    model, _ = build_mmdit(CFG)
    path = tmp_path / "student.pt"
    # What save_artifact wrote before the move, with the factory name of that time.
    torch.save(
        {
            "format": "omnitrain-model/1",
            "factory": "omnitrain.serving.mmdit_adapter:build_mmdit",
            "config": CFG.to_dict(),
            "state_dict": model.state_dict(),
            "sampler": {},
            "meta": {},
        },
        path,
    )
    art = load_artifact(path)
    assert art.factory == MMDIT_FACTORY
    assert all(torch.equal(a, b) for a, b in zip(art.model.state_dict().values(), model.state_dict().values()))


def test_a_folder_without_a_shard_is_no_teacher(tmp_path):
    with pytest.raises(ModelFileError, match="holds no whole model.*not a checkpoint step folder"):
        load_teacher(tmp_path, CFG)
