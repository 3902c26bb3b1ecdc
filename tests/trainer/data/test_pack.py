"""`omnitrain data pack`: a folder of real MP4s and captions -> raw shards that round-trip, bad files skipped with
their reasons, nothing half-written, nothing overwritten."""

import json

import pyarrow.parquet as pq
import pytest

from omnitrain.cli import main
from omnitrain.media.video import decode_video
from omnitrain.trainer.data.pack import PackError, PackSpec, clip_root, group_files, pack_folder, raw_samples
from omnitrain.trainer.data.raw import CorruptRow, decode_raw, encode_raw
from omnitrain.trainer.data.reader import DataError, ShardReader, list_shards
from omnitrain.trainer.data.shapes import ShapesSpec, draw, write_shapes

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    write_shapes(folder, ShapesSpec(clips=10, seed=3), **QUIET)
    return folder


def _copy(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_files_are_grouped_by_clip_with_captions_references_and_contexts():
    names = [
        "a.mp4",
        "a.txt",
        "a.ref.png",
        "a.ref1.jpg",
        "b.MOV",
        "b.txt",
        "b.context.mp4",
        "c.txt",
        "sub/d.webm",
        "notes.md",
    ]
    groups = {g.name: g for g in group_files(names)}
    assert set(groups) == {"a", "b", "sub/d"}  # c has no clip; notes.md is nobody's
    assert groups["a"].references == ("a.ref.png", "a.ref1.jpg") and groups["a"].caption == "a.txt"
    assert groups["b"].context == "b.context.mp4" and groups["b"].video == "b.MOV"
    assert groups["sub/d"].caption is None


def test_packed_shards_round_trip_every_clip_caption_reference_and_context(clips, tmp_path):
    report = pack_folder(clips, tmp_path / "raw", PackSpec(shards=3, seed=1), **QUIET)
    assert report.samples == 10 and not report.skipped and len(report.shards) == 3
    samples = list(raw_samples(tmp_path / "raw"))
    assert sorted(s.key for s in samples) == list(range(10))
    drawn = draw(ShapesSpec(clips=10, seed=3))
    for sample in samples:
        motion, kind = drawn[sample.key]
        name = f"clip-{sample.key:05d}"
        assert sample.source == f"{name}.mp4" and sample.task == kind
        assert sample.caption == motion.caption
        assert sample.video == (clips / f"{name}.mp4").read_bytes()
        assert (sample.info.frames, sample.info.height, sample.info.width) == (
            motion.frames,
            motion.height,
            motion.width,
        )
        assert decode_video(sample.video).frames.shape == (motion.frames, motion.height, motion.width, 3)
        if kind == "i2v":
            assert sample.references == [(clips / f"{name}.ref.png").read_bytes()]
        if kind == "v2v":
            assert sample.context == (clips / f"{name}.context.mp4").read_bytes()
            assert sample.context_frames == motion.frames
    manifest = json.loads((tmp_path / "raw" / "dataset.json").read_text())
    assert manifest["kind"] == "raw" and manifest["samples"] == 10 and manifest["skipped"] == []


def test_the_shuffle_is_done_once_at_pack_time_and_follows_the_seed(clips, tmp_path):
    def order(seed, name):
        pack_folder(clips, tmp_path / name, PackSpec(shards=2, seed=seed), **QUIET)
        return [s.key for s in raw_samples(tmp_path / name)]

    first, again, other = order(5, "a"), order(5, "b"), order(6, "c")
    assert first == again and first != other and first != sorted(first)


def test_unreadable_files_are_skipped_with_a_count_and_their_reasons(clips, tmp_path):
    folder = _copy(clips, tmp_path / "clips")
    (folder / "junk.mp4").write_bytes(b"not a video at all" * 20)
    (folder / "junk.txt").write_text("a caption for junk\n")
    (folder / "nocaption.mp4").write_bytes((folder / "clip-00000.mp4").read_bytes())
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "empty.txt").write_text("empty\n")
    torn = (folder / "clip-00001.mp4").read_bytes()
    (folder / "clip-00001.mp4").write_bytes(torn[: len(torn) // 2])
    (folder / "clip-00002.txt").write_text("   \n")
    (folder / "badref.mp4").write_bytes((folder / "clip-00000.mp4").read_bytes())
    (folder / "badref.txt").write_text("a caption\n")
    (folder / "badref.ref.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    lines = []
    report = pack_folder(folder, tmp_path / "raw", PackSpec(shards=2), log=lines.append)
    reasons = dict(report.skipped)
    assert set(reasons) == {"junk.mp4", "nocaption.mp4", "empty.mp4", "clip-00001.mp4", "clip-00002.mp4", "badref.mp4"}
    assert "not a readable video" in reasons["junk.mp4"] and "not a readable video" in reasons["clip-00001.mp4"]
    assert "no caption file nocaption.txt" in reasons["nocaption.mp4"]
    assert "empty" in reasons["empty.mp4"] and "clip-00002.txt is empty" in reasons["clip-00002.mp4"]
    assert reasons["badref.mp4"].startswith("badref.ref.png: not a readable image")
    assert report.samples == 8
    assert any("6 skipped" in line for line in lines)
    assert sum(1 for line in lines if line.startswith("data pack: skipped ")) == 6
    manifest = json.loads((tmp_path / "raw" / "dataset.json").read_text())
    assert {entry["file"] for entry in manifest["skipped"]} == set(reasons)
    assert {s.source for s in raw_samples(tmp_path / "raw")}.isdisjoint(reasons)


def test_a_folder_that_holds_a_dataset_is_refused_and_left_as_it_was(clips, tmp_path):
    pack_folder(clips, tmp_path / "raw", PackSpec(shards=2), **QUIET)
    before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    with pytest.raises(PackError, match="already holds a dataset"):
        pack_folder(clips, tmp_path / "raw", PackSpec(shards=5, seed=9), **QUIET)
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before


def test_a_pack_that_fails_half_way_leaves_no_shard_and_no_manifest(clips, tmp_path):
    folder = _copy(clips, tmp_path / "clips")
    calls = []

    def log(line):
        calls.append(line)
        if line.endswith("clips read, 0 skipped") and "10/10" in line:
            # between the probe and the write: a clip the second shard needs disappears
            for sample_file in sorted(folder.glob("clip-*.mp4"))[-3:]:
                sample_file.unlink()

    with pytest.raises(PackError, match="could not be read again after it was probed"):
        pack_folder(folder, tmp_path / "raw", PackSpec(shards=5, seed=2), log=log)
    assert any("shard 1/5" in line for line in calls)  # one shard had been written before the failure
    assert list((tmp_path / "raw").iterdir()) == []
    # and the folder is usable for the next attempt
    assert pack_folder(folder, tmp_path / "raw", PackSpec(shards=2), **QUIET).samples == 7


def test_paths_mode_keeps_the_clips_in_place_and_refuses_paths_out_of_the_folder(clips, tmp_path):
    pack_folder(clips, tmp_path / "raw", PackSpec(shards=1, store="paths"), **QUIET)
    root = clip_root(tmp_path / "raw")
    assert root == clips.resolve()
    for sample in raw_samples(tmp_path / "raw"):
        assert sample.video is None and sample.video_bytes(root) == (clips / sample.source).read_bytes()
    sample.video_path = "../../etc/passwd"
    with pytest.raises(CorruptRow, match="leaves the data folder"):
        sample.video_bytes(root)


def test_raw_rows_that_break_the_schema_are_corrupt_rows_naming_the_file(clips, tmp_path):
    pack_folder(clips, tmp_path / "raw", PackSpec(shards=1), **QUIET)
    row = pq.read_table(list_shards(tmp_path / "raw")[0]).to_pylist()[0]
    assert encode_raw(decode_raw(row)) == row
    for change, reason in (
        ({"video_path": "x.mp4"}, "exactly one of"),
        ({"caption": " "}, "caption is empty"),
        ({"frames": 0}, "must be positive"),
        ({"task": "i2v", "references": None}, "needs at least one reference image"),
        ({"task": "v2v", "context": None}, "needs a context clip"),
        ({"task": "t3v"}, "is not one of"),
    ):
        with pytest.raises(CorruptRow, match=reason) as error:
            decode_raw({**row, **change})
        assert row["source"] in str(error.value)


def test_the_encoded_reader_refuses_a_raw_dataset_with_a_clear_error(clips, tmp_path):
    pack_folder(clips, tmp_path / "raw", PackSpec(shards=1), **QUIET)
    with pytest.raises(DataError, match="holds raw clips .* not encoded latents"):
        ShardReader(tmp_path / "raw")


def test_the_cli_packs_and_exits_2_with_the_reason_when_it_cannot(clips, tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path / "clips"), "--clips", "3", "--seed", "1"]) == 0
    assert len(list((tmp_path / "clips").glob("clip-*[0-9].mp4"))) == 3
    assert main(["data", "pack", str(tmp_path / "clips"), "--out", str(tmp_path / "raw"), "--shards", "2"]) == 0
    assert "3 samples in 2 shards, 0 files skipped" in capsys.readouterr().out
    assert main(["data", "pack", str(tmp_path / "clips"), "--out", str(tmp_path / "raw")]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "pack", str(empty), "--out", str(tmp_path / "raw2")]) == 2
    assert "no clips" in capsys.readouterr().err
    assert not (tmp_path / "raw2").exists()
