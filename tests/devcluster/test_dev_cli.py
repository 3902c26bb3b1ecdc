"""`omnitrain dev` parsing: --root before or after the action (issue 14, case 9: `dev up --root X` was refused)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnitrain.cli import build_parser
from omnitrain.devcluster.cli import cluster_root


@pytest.mark.parametrize(
    "argv",
    [
        ["dev", "--root", "/tmp/c", "up"],
        ["dev", "up", "--root", "/tmp/c"],
        ["dev", "up", "--nodes", "1", "--root", "/tmp/c"],
        ["dev", "down", "--root", "/tmp/c"],
        ["dev", "status", "--root", "/tmp/c"],
        ["dev", "logs", "pod-a", "--root", "/tmp/c"],
        ["dev", "node", "add", "n1", "--root", "/tmp/c"],
        ["dev", "node", "delete", "n1", "--root", "/tmp/c"],
        ["dev", "agent", "--root", "/tmp/c"],
        ["dev", "--root", "/tmp/c", "up", "--root", "/tmp/../tmp/c"],  # the same folder twice is fine
    ],
)
def test_root_before_or_after_the_action(argv):
    assert cluster_root(build_parser().parse_args(argv)).resolve() == Path("/tmp/c")


def test_no_root_means_the_default_folder_and_two_folders_are_refused():
    assert cluster_root(build_parser().parse_args(["dev", "up"])) is None
    args = build_parser().parse_args(["dev", "--root", "/tmp/a", "up", "--root", "/tmp/b"])
    with pytest.raises(SystemExit, match="--root given twice"):
        cluster_root(args)
