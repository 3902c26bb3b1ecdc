"""configMap/secret volumes on disk, laid out and updated as the kubelet's atomic writer does.

A volume folder holds one data folder per version (`..2026_12_02_03_04_05.<random>/`), a `..data` symlink to the
current one, and one symlink per top-level entry (`key -> ..data/key`). An update writes the new data folder beside
the old one and renames a fresh `..data` symlink over the old: a reader sees the old files or the new ones, never
half a file and never a mix of versions. Entries of the old version that the new one lacks go away; old data
folders are removed after the swap. A process that opened a file keeps reading the version it opened.

Why symlinks rather than renaming each file: a pod mounts the whole folder (a bind mount in its private mount
namespace), so only what changes inside that folder reaches it, and one rename publishes every key at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

DATA_LINK = "..data"
_TMP_LINK = "..data_tmp"


def top_level_names(files: dict[str, bytes]) -> set[str]:
    """The entries a volume shows at its root for these files (`a/b.txt` shows as `a`)."""
    return {rel.split("/", 1)[0] for rel in files}


def current_files(folder: Path) -> dict[str, bytes] | None:
    """The files of the version `..data` points at; None when the folder has no such version yet."""
    data = folder / DATA_LINK
    if not data.is_symlink():
        return None
    root = data.resolve()
    if not root.is_dir():
        return None
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_atomically(folder: Path, files: dict[str, bytes]) -> bool:
    """Make `folder` show exactly `files` (relative path -> bytes); False when it already did (nothing written)."""
    folder.mkdir(parents=True, exist_ok=True)
    if current_files(folder) == files:
        return False
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    data_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=folder))
    for rel, content in files.items():
        target = data_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    data_dir.chmod(0o755)  # mkdtemp makes it 0700; the pod's processes may run as anyone
    _symlink_replace(folder / _TMP_LINK, folder / DATA_LINK, data_dir.name)
    wanted = top_level_names(files)
    for name in wanted:
        link, goal = folder / name, f"{DATA_LINK}/{name}"
        if not (link.is_symlink() and os.readlink(link) == goal):
            if link.is_dir() and not link.is_symlink():
                shutil.rmtree(link)  # a plain folder of an earlier layout
            _symlink_replace(folder / f"..{name}.tmp", link, goal)
    for entry in folder.iterdir():
        if entry.name in wanted or entry.name == DATA_LINK or entry == data_dir:
            continue
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)  # an old data folder (or a plain folder of an earlier layout)
    return True


def _symlink_replace(tmp: Path, link: Path, target: str) -> None:
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def resource_version(obj: dict | None) -> int:
    """An object's resourceVersion as a number (from one etcd they are its revisions); 0 when absent."""
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class VolumeWriter:
    """Writes volume folders from two threads (a container start and the ConfigMap watch) without an older
    version overwriting a newer one: a start may read a ConfigMap just before an update and write it just after."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[Path, int] = {}

    def write(self, folder: Path, files: dict[str, bytes], version: int) -> bool:
        """Write `files` of object version `version` unless a newer version was written there; True if written."""
        with self._lock:
            if version < self._versions.get(folder, 0):
                return False
            self._versions[folder] = version
            return write_atomically(folder, files)

    def forget(self, under: Path) -> None:
        """A pod gone: its folders' versions need not be kept."""
        with self._lock:
            for folder in [f for f in self._versions if f.is_relative_to(under)]:
                del self._versions[folder]
