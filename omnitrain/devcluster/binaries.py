"""Where the control-plane binaries live, building them with hack/build-cluster-bins.sh when missing."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

K8S_VERSION = "v1.34.4"
KWOK_VERSION = "v0.7.0"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-cluster-bins.sh"


def cache_dir() -> Path:
    return Path(os.environ.get("OMNITRAIN_CACHE", Path.home() / ".cache" / "omnitrain"))


def bin_dir() -> Path:
    return cache_dir() / "bin" / f"k8s-{K8S_VERSION}-kwok-{KWOK_VERSION}"


def missing_binaries(folder: Path | None = None) -> list[str]:
    folder = folder or bin_dir()
    return [b for b in BINARIES if not os.access(folder / b, os.X_OK)]


def build_if_missing(what: str, script: Path, missing: Callable[[], list[str]], folder: Path, log=print) -> Path:
    """Returns `folder`, running the build `script` first when `missing()` names anything (minutes, cold)."""
    absent = missing()
    if absent:
        log(f"[dev] building {what} ({', '.join(absent)} missing) with {script}")
        subprocess.run(["bash", str(script)], check=True)
        still = missing()
        if still:
            raise RuntimeError(f"{script} finished but {still} are still missing in {folder}")
    return folder


def ensure_binaries(log=print) -> Path:
    """Returns the binary folder, running the build script first when any binary is missing (minutes, cold)."""
    return build_if_missing("cluster binaries", BUILD_SCRIPT, missing_binaries, bin_dir(), log)


def reported_versions(folder: Path | None = None) -> dict[str, str]:
    """The version each binary prints, e.g. {"kube-apiserver": "v1.34.4", "etcd": "3.6.4", ...}."""
    folder = folder or bin_dir()
    flags = {"kubectl": ["version", "--client"], "kwok": ["--version"]}
    out: dict[str, str] = {}
    for name in BINARIES:
        text = subprocess.run(
            [str(folder / name), *flags.get(name, ["--version"])], capture_output=True, text=True, timeout=30
        ).stdout
        match = re.search(r"v?\d+\.\d+\.\d+", text)
        out[name] = match.group(0) if match else text.strip()
    return out
