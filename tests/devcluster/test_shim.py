"""The shim's second stage (`--exec`, inside the mount namespace) without a cluster: a command that cannot start."""

from __future__ import annotations

import json

from omnitrain.devcluster import shim


def test_exec_stage_reports_127_for_a_command_that_cannot_start(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the stage enters workingDir; the test's own directory comes back afterwards
    spec = {
        "argv": ["/nonexistent/omnitrain-no-such-command"],
        "env": {},
        "workingDir": str(tmp_path / "w"),
        "mounts": [],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert shim.main(["--exec", str(tmp_path)]) == 127
    assert "cannot start '/nonexistent/omnitrain-no-such-command'" in capsys.readouterr().err
    assert (tmp_path / "w").is_dir()
