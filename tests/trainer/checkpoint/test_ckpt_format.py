"""The shard format on disk: DCP's own tools read a step folder without omnitrain, `omnitrain checkpoint
consolidate` writes it as one file (and refuses what it must), and format-1 checkpoints still restore."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from omnitrain.checkpoint_format import METADATA_NAME, is_shard, read_model_state
from omnitrain.checkpoint_paths import MANIFEST_NAME, legacy_shard_file_name, list_step_dirs, step_dir
from omnitrain.fsio import file_crc32
from omnitrain.trainer.checkpoint.checkpointer import CheckpointConfig, Checkpointer
from omnitrain.trainer.checkpoint.manifest import WorldLayout
from omnitrain.trainer.checkpoint.restore import LayoutChangeError


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "train": {
            "model": {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)},
            "optimizer": {"state": {0: {"exp_avg": torch.randn(4, 3, generator=g)}}, "param_groups": [{"lr": 0.1}]},
            "loader": {"position": seed},
        },
        "rng": {"torch": torch.get_rng_state(), "python": (3, (1, 2, 3), None)},
        "step": seed,
    }


def _saved(tmp_path, async_save: bool = False) -> tuple[dict, object]:
    config = CheckpointConfig(
        job="fmt", local_root=str(tmp_path / "nvme"), persistent_root=str(tmp_path / "pv"), async_save=async_save
    )
    checkpointer = Checkpointer(config, WorldLayout(), None)
    state = _state(5)
    checkpointer.save(5, state)
    checkpointer.close()
    return state, step_dir(tmp_path / "pv", "fmt", 5)


def _equal(got, want) -> None:
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want)
    elif isinstance(want, dict):
        assert sorted(map(str, got)) == sorted(map(str, want))
        for k, v in want.items():
            _equal(got[k] if k in got else got[str(k)], v)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _equal(g, w)
    else:
        assert got == want


@pytest.mark.parametrize("async_save", [False, True])
def test_dcps_own_converter_reads_a_step_folder(tmp_path, async_save):
    state, folder = _saved(tmp_path, async_save)
    assert (folder / METADATA_NAME).is_file() and is_shard((folder / "rank-00000.distcp").read_bytes())
    dcp_to_torch_save(folder, tmp_path / "dcp.pt")  # torch's own tool, no omnitrain code on the read path
    _equal(torch.load(tmp_path / "dcp.pt", weights_only=False), state)
    _equal(read_model_state(folder), state["train"]["model"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "omnitrain", "checkpoint", "consolidate", *args], capture_output=True, text=True
    )


def test_consolidate_writes_one_file_and_refuses_what_it_must(tmp_path):
    state, folder = _saved(tmp_path)
    done = _cli(str(folder), "--out", str(tmp_path / "whole.pt"))
    assert done.returncode == 0, done.stderr
    _equal(torch.load(tmp_path / "whole.pt", weights_only=False), state)
    model = _cli(str(folder), "--out", str(tmp_path / "model.pt"), "--model-only")
    assert model.returncode == 0, model.stderr
    _equal(torch.load(tmp_path / "model.pt", weights_only=True), state["train"]["model"])

    before = (tmp_path / "whole.pt").read_bytes()
    again = _cli(str(folder), "--out", str(tmp_path / "whole.pt"))
    assert again.returncode == 2 and "never overwrites" in again.stderr
    assert (tmp_path / "whole.pt").read_bytes() == before

    shard = folder / "rank-00000.distcp"
    shard.write_bytes(shard.read_bytes()[:-1])
    torn = _cli(str(folder), "--out", str(tmp_path / "torn.pt"))
    assert torn.returncode == 2 and "corrupt or truncated" in torn.stderr and not (tmp_path / "torn.pt").exists()
    (folder / MANIFEST_NAME).unlink()
    incomplete = _cli(str(folder), "--out", str(tmp_path / "torn.pt"))
    assert incomplete.returncode == 2 and "no manifest" in incomplete.stderr


def _format_1_checkpoint(tmp_path, state: dict, layout: WorldLayout) -> None:
    """A step folder as format 1 wrote it: rank-<R>.pt torch.save files and a manifest without format fields."""
    folder = step_dir(tmp_path / "pv", "fmt", 7)
    folder.mkdir(parents=True)
    name = legacy_shard_file_name(0)
    torch.save(state, folder / name)
    size, crc = file_crc32(folder / name)
    manifest = {
        "job": "fmt",
        "step": 7,
        "layout": {"dp": layout.dp, "pp": 1, "ulysses": 1, "tp": 1, "data_sharding": layout.data_sharding},
        "model_fingerprint": Checkpointer(
            CheckpointConfig(job="fmt", local_root=str(tmp_path / "x"), async_save=False), WorldLayout(), None
        ).fingerprint,
        "files": [{"name": name, "rank": 0, "size": size, "crc32": crc}],
        "created_unix": 0.0,
        "format_version": 1,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_a_format_1_checkpoint_restores_into_its_own_layout(tmp_path):
    state = _state(7)
    _format_1_checkpoint(tmp_path, state, WorldLayout())
    config = CheckpointConfig(
        job="fmt", local_root=str(tmp_path / "nvme"), persistent_root=str(tmp_path / "pv"), async_save=False
    )
    restored = Checkpointer(config, WorldLayout(), None).restore()
    assert restored is not None and restored.step == 7 and restored.manifest.format == "torch-save"
    _equal(restored.state, state)
    assert list(list_step_dirs(tmp_path / "pv", "fmt")) == [7]


def test_a_format_1_checkpoint_of_a_sharded_layout_is_refused_naming_its_format(tmp_path):
    _format_1_checkpoint(tmp_path, _state(7), WorldLayout(data_sharding="fsdp"))
    config = CheckpointConfig(
        job="fmt", local_root=str(tmp_path / "nvme"), persistent_root=str(tmp_path / "pv"), async_save=False
    )
    with pytest.raises(LayoutChangeError, match="format torch-save, which cannot be resharded"):
        Checkpointer(config, WorldLayout(), None).restore(lambda: _state(0))
