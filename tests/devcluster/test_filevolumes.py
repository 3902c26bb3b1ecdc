"""configMap volume folders: the kubelet's layout (`..data` swapped atomically), updates, removed keys, `items`."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from omnitrain.devcluster import podspec
from omnitrain.devcluster.filevolumes import DATA_LINK, VolumeWriter, current_files, write_atomically


def _shown(folder: Path) -> dict[str, bytes]:
    """What a process reading the mounted folder sees, symlinks followed (dot entries hidden, as `ls` hides them)."""
    shown = {}
    for top, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith("..")]
        for name in names:
            if not name.startswith(".."):
                path = Path(top) / name
                shown[str(path.relative_to(folder))] = path.read_bytes()
    return shown


def test_layout_is_the_kubelets_data_symlink(tmp_path):
    assert write_atomically(tmp_path, {"gang.json": b"{}", "conf/a.yaml": b"a: 1\n"})
    assert (tmp_path / DATA_LINK).is_symlink()
    assert os.readlink(tmp_path / "gang.json") == f"{DATA_LINK}/gang.json"
    assert os.readlink(tmp_path / "conf") == f"{DATA_LINK}/conf"
    assert _shown(tmp_path) == {"gang.json": b"{}", "conf/a.yaml": b"a: 1\n"}
    assert current_files(tmp_path) == {"gang.json": b"{}", "conf/a.yaml": b"a: 1\n"}


def test_update_swaps_the_version_and_removes_keys_that_went_away(tmp_path):
    write_atomically(tmp_path, {"gang.json": b'{"generation": 1}', "old": b"x", "dir/f": b"1"})
    first = (tmp_path / DATA_LINK).resolve()
    assert write_atomically(tmp_path, {"gang.json": b'{"generation": 2}'})
    assert _shown(tmp_path) == {"gang.json": b'{"generation": 2}'}
    assert not (tmp_path / "old").exists() and not (tmp_path / "old").is_symlink()
    assert not (tmp_path / "dir").exists()
    assert not first.exists(), "the previous version's folder is removed after the swap"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("..")) == sorted(
        [DATA_LINK, (tmp_path / DATA_LINK).resolve().name]
    )


def test_unchanged_content_is_not_rewritten(tmp_path):
    assert write_atomically(tmp_path, {"k": b"v"})
    version = (tmp_path / DATA_LINK).resolve()
    assert not write_atomically(tmp_path, {"k": b"v"})
    assert (tmp_path / DATA_LINK).resolve() == version


def test_plain_files_of_an_earlier_layout_are_replaced(tmp_path):
    (tmp_path / "k").write_bytes(b"plain")
    (tmp_path / "stale").write_bytes(b"gone")
    write_atomically(tmp_path, {"k": b"new"})
    assert (tmp_path / "k").is_symlink() and _shown(tmp_path) == {"k": b"new"}


def test_a_reader_never_sees_half_a_file(tmp_path):
    """Readers open the file while versions swap underneath: each read is one whole version."""
    versions = [bytes([65 + i]) * 200_000 for i in range(8)]
    write_atomically(tmp_path, {"k": versions[0]})
    seen, stop = set(), threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add((tmp_path / "k").read_bytes())
            except FileNotFoundError:
                seen.add(b"missing")

    reader = threading.Thread(target=read)
    reader.start()
    for content in versions[1:] * 5:
        write_atomically(tmp_path, {"k": content})
    stop.set()
    reader.join()
    assert seen <= set(versions), "a read saw a torn or missing file"


def test_an_older_version_never_overwrites_a_newer_one(tmp_path):
    """A container start that read the ConfigMap just before an update must not undo the watch's newer write."""
    writer = VolumeWriter()
    assert writer.write(tmp_path, {"k": b"v7"}, version=7)
    assert not writer.write(tmp_path, {"k": b"v5"}, version=5)
    assert _shown(tmp_path) == {"k": b"v7"}
    writer.forget(tmp_path.parent)
    assert writer.write(tmp_path, {"k": b"v5"}, version=5), "a forgotten folder takes any version"


def test_items_select_and_rename_keys():
    volume = {"name": "cfg", "configMap": {"name": "c", "items": [{"key": "a", "path": "sub/a.txt"}]}}
    configmap = {"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}}
    assert podspec.file_volume_contents(volume, configmap) == {"sub/a.txt": b"1"}
    pod = {"spec": {"volumes": [volume, {"name": "other", "configMap": {"name": "d"}}, {"name": "e", "emptyDir": {}}]}}
    assert podspec.configmap_volumes(pod, "c") == [volume]
