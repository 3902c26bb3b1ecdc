"""Real clips for the data tests: a packed raw dataset of shapes MP4s, the frozen encoders, and the same dataset
encoded once by `omnitrain data encode` (session-wide: loading the encoders and encoding cost seconds)."""

import sys
from pathlib import Path

import pytest

from omnitrain.encoders import Encoders
from omnitrain.trainer.data.encode import encode_dataset
from omnitrain.trainer.data.pack import PackSpec, pack_folder
from omnitrain.trainer.data.shapes import write_shapes

sys.path.insert(0, str(Path(__file__).parent))
from clip_fixtures import CLIPS, ENCODERS, QUIET  # noqa: E402


@pytest.fixture(scope="session")
def encoders():
    return Encoders.load(ENCODERS)


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_shapes(folder, CLIPS, **QUIET)
    return folder


@pytest.fixture(scope="session")
def raw(clip_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("raw") / "raw"
    pack_folder(clip_folder, out, PackSpec(shards=3, seed=4), **QUIET)
    return out


@pytest.fixture(scope="session")
def encoded(raw, encoders, tmp_path_factory):
    out = tmp_path_factory.mktemp("encoded") / "encoded"
    report = encode_dataset(raw, out, encoders, **QUIET)
    assert report.samples == CLIPS.clips and not report.skipped
    return out
