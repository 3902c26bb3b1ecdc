"""The GPU kit's CPU dry mode runs in the suite so the script a lent GPU machine runs cannot rot: every section
reports figures or says why it skipped, and the kit imports nothing the device's stock image lacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The device's image has no pydantic, pyarrow or kopf: the dry run refuses to import them, as that image would.
RUN_WITHOUT_EXTRAS = """
import runpy, sys
class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('pydantic', 'pyarrow', 'kopf'):
            raise ModuleNotFoundError(f'No module named {name!r} (not in the GPU image)')
sys.meta_path.insert(0, Missing())
sys.argv = ['bench/gpu/kit.py', '--dry', '--out', sys.argv[1]]
runpy.run_path('bench/gpu/kit.py', run_name='__main__')
"""
SECTIONS = ("mfu", "fp8", "checkpoint", "offload")


@pytest.mark.slow
def test_dry_mode_reports_every_section_without_pydantic(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_EXTRAS, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_kit.json").read_text())
    assert (tmp_path / "gpu_kit.txt").read_text().startswith("GPU kit")
    assert report["meta"]["dry"] is True and report["meta"]["seconds"] < 60
    for name in SECTIONS:
        section = report["sections"][name]
        assert section["status"] == "ok", section.get("error")
        assert section["rows"], name
        for row in section["rows"]:
            assert "skipped" in row or not ({"step_s", "fp8_ms", "blocking_s"}.isdisjoint(row)), (name, row)
            assert "error" not in row, (name, row)
    mfu = report["sections"]["mfu"]["rows"]
    measured = {r["backend"] for r in mfu if "step_s" in r}
    assert {"sdpa_mask", "sdpa_loop", "math", "flex"} <= measured  # the backends CPU has all ran
    assert all(r["tflops"] > 0 for r in mfu if "step_s" in r)
    assert any(r["method"].startswith("project HostStaging") for r in report["sections"]["checkpoint"]["rows"])
    offload = {r["offload"]: r for r in report["sections"]["offload"]["rows"]}
    assert offload["none"]["offloaded_gib"] == 0 and offload["all"]["offloaded_gib"] > 0


def test_one_f_one_b_rank_orders():
    sys.path.insert(0, str(REPO / "bench" / "gpu"))
    from kit import one_f_one_b

    order = ["".join((a.kind, str(a.micro_batch))) for a in one_f_one_b(0, 2, 4)]
    assert order == ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"]
    last = ["".join((a.kind, str(a.micro_batch))) for a in one_f_one_b(1, 2, 2)]
    assert last == ["F0", "B0", "F1", "B1"]


def test_checkpoint_staging_falls_back_when_dev_shm_is_small(monkeypatch):
    """A container's 64 MiB /dev/shm cannot hold the project's shared staging buffers (a SIGBUS would end the kit):
    the kit then measures pinned host tensors itself and says so."""
    import shutil

    import torch

    sys.path.insert(0, str(REPO / "bench" / "gpu"))
    import kit

    def free(nbytes: int):
        return lambda path: shutil._ntuple_diskusage(nbytes, 0, nbytes)  # type: ignore[attr-defined]

    monkeypatch.setattr(kit.shutil, "disk_usage", free(64 * 2**20))
    staging, how = kit.host_staging(4 * 2**30)
    assert isinstance(staging, kit.PinnedStaging) and "0.06 GiB free" in how
    tensors = [torch.arange(6.0).view(2, 3), torch.ones(4, dtype=torch.bfloat16)]
    staging.allocate_for(tensors)
    staging.copy_in(tensors)
    assert all(torch.equal(v, t) for v, t in zip(staging.views, tensors))
    monkeypatch.setattr(kit.shutil, "disk_usage", free(2**40))
    assert kit.host_staging(4 * 2**30)[1] == "project HostStaging.copy_in"
