"""Where promotion artifacts live on the persistent claim. Pure (the operator imports it; no torch)."""

from __future__ import annotations

from pathlib import PurePosixPath

STUDENT_FILE = "student.pt"


def promotion_dir(persistent_path: str, job: str) -> str:
    """`<persistentPath>/<job>/promotion/`: next to the job's step-<N> checkpoint folders, never inside one."""
    return str(PurePosixPath(persistent_path) / job / "promotion")


def student_path(persistent_path: str, job: str) -> str:
    """The distilled student written by `omnitrain distill` and served by `omnitrain serve`."""
    return str(PurePosixPath(promotion_dir(persistent_path, job)) / STUDENT_FILE)


__all__ = ["STUDENT_FILE", "promotion_dir", "student_path"]
