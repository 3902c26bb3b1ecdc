"""A checkpoint the storage refuses (issue 14, case 6): ENOSPC, EDQUOT, EROFS, EACCES, EPERM end the pod with the
StorageError termination message and ExitCode.STORAGE (restart will not help), naming the path, the errno and the
fix, instead of a crash the operator would retry from scratch twice."""

from __future__ import annotations

import errno
import json

import pytest
from train_helpers import config_dict, write_config

from omnitrain import fsio
from omnitrain.cli import main
from omnitrain.contract import ExitCode, TerminationMessage, storage_oserror, storage_termination


@pytest.mark.parametrize(
    ("err_no", "name", "fix"),
    [(errno.ENOSPC, "ENOSPC", "free space on"), (errno.EACCES, "EACCES", "write access")],
)
def test_a_refused_checkpoint_write_exits_with_the_storage_message(tmp_path, monkeypatch, capsys, err_no, name, fix):
    term = tmp_path / "termination"
    monkeypatch.setenv("OMNITRAIN_TERMINATION_LOG", str(term))
    write_atomic = fsio.write_atomic

    def refusing(path, write, *args, **kwargs):
        if str(path).endswith(".distcp"):  # the shard of a checkpoint; data and the metrics log still write
            raise OSError(err_no, "refused", str(path))
        return write_atomic(path, write, *args, **kwargs)

    monkeypatch.setattr(fsio, "write_atomic", refusing)
    config = config_dict(tmp_path, steps=3)
    config["spec"]["checkpoint"].update({"intervalSteps": 2, "async": False})
    local = config["spec"]["checkpoint"]["localPath"]
    assert main(["train", "--config", write_config(tmp_path / "job.yaml", config)]) == ExitCode.STORAGE
    msg = TerminationMessage.from_json(term.read_text())
    assert msg is not None and msg.reason == "StorageError"
    assert msg.evidence == {"path": local, "errno": name}
    assert f"cannot write {local}: {name}" in msg.message and fix in msg.message
    assert "checkpoint.localPath" in msg.message and "restarting will not help" in msg.message
    assert f"cannot write {local}" in capsys.readouterr().err


def test_other_errors_are_not_storage_errors():
    assert storage_oserror(ValueError("x")) is None
    assert storage_oserror(OSError(errno.EIO, "I/O error")) is None  # a flaky disk may work after a restart
    try:
        try:
            raise OSError(errno.EDQUOT, "quota", "/mnt/ck")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as outer:
        found = storage_oserror(outer)
    assert found is not None and found.errno == errno.EDQUOT


def test_the_message_names_the_field_and_fits_each_errno():
    ro = storage_termination("/mnt/pv", errno.EROFS, "checkpoint.persistentPath")
    assert "read-only" in ro.message and "checkpoint.persistentPath" in ro.message
    assert json.loads(ro.to_json())["evidence"] == {"path": "/mnt/pv", "errno": "EROFS"}
