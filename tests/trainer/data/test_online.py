"""Online encoding: raw shards through the frozen encoders inside the loader give the same packed batches, step for
step and rank for rank, as the same clips pre-encoded by `omnitrain data encode`; each data rank encodes only its
own samples; and the multi-process trainer on raw clips ends with the parameters it ends with on pre-encoded ones."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from omnitrain.checkpoint_format import read_model_state
from omnitrain.model.config import resolve_model_config
from omnitrain.trainer.data.balance import CostModel
from omnitrain.trainer.data.loader import PackedLoader
from omnitrain.trainer.data.online import OnlineEncoding, PlannedSample
from omnitrain.trainer.data.pack import clip_root
from omnitrain.trainer.data.reader import DataError, ShardReader

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from clip_fixtures import CLIPS, ENCODERS  # noqa: E402
from train_helpers import config_dict, torchrun_train, write_config  # noqa: E402

MODEL = resolve_model_config("tiny", {"text_dim": 384})
DP, MICRO = 2, 2


def _loader(folder, rank, online=None):
    return PackedLoader(
        ShardReader(folder, row_decoder=online.plan if online else None),
        MODEL.patch_size,
        token_budget=160,
        cost=CostModel.of(MODEL),
        dp_rank=rank,
        dp_size=DP,
        micro_batches=MICRO,
        text_dim=MODEL.text_dim,
        latent_channels=MODEL.latent_channels,
        materialize=online.materialize if online else None,
    )


def _same(a, b):
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), field.name
        else:
            assert x == y, field.name


def test_online_batches_equal_pre_encoded_ones_on_every_rank_and_each_rank_encodes_only_its_own(raw, encoded, encoders):
    steps = 4  # more than an epoch of 12 clips at this budget: the wrap-around is covered too
    onlines = [OnlineEncoding(encoders, clip_root(raw)) for _ in range(DP)]
    online_loaders = [_loader(raw, r, onlines[r]) for r in range(DP)]
    pre_loaders = [_loader(encoded, r) for r in range(DP)]
    encoded_per_step = []
    for _ in range(steps):
        before = [o.samples for o in onlines]
        step_samples = 0
        for rank in range(DP):
            online_batches, pre_batches = online_loaders[rank].next_step(), pre_loaders[rank].next_step()
            assert len(online_batches) == len(pre_batches) == MICRO
            for a, b in zip(online_batches, pre_batches):
                _same(a, b)
            step_samples += sum(b.num_samples for b in pre_batches)
        mine = [o.samples - b for o, b in zip(onlines, before)]
        assert sum(mine) == step_samples  # every sample encoded once, by the rank that trains on it
        encoded_per_step.append(mine)
    assert all(all(n > 0 for n in per_rank) for per_rank in encoded_per_step)
    assert online_loaders[0].reader.epoch >= 1


def test_planned_samples_hold_no_memory_and_have_the_encoded_shapes(raw, encoded, encoders):
    online = OnlineEncoding(encoders, clip_root(raw))
    reader = ShardReader(raw, row_decoder=online.plan)
    for _ in range(CLIPS.clips):
        _, planned = next(reader)
        assert isinstance(planned, PlannedSample) and planned.video.is_meta and planned.text.is_meta
        encoded = online.materialize(planned)
        assert encoded.video.shape == planned.video.shape and encoded.text.shape == planned.text.shape
        assert not encoded.video.is_meta


def test_resume_mid_stream_gives_the_same_next_batches(raw, encoders):
    def run(steps, state=None):
        loader = _loader(raw, 0, OnlineEncoding(encoders, clip_root(raw)))
        if state is not None:
            loader.load_state_dict(state)
        return [loader.next_step() for _ in range(steps)], loader.state_dict()

    straight, _ = run(3)
    _, state = run(1)
    resumed, _ = run(2, json.loads(json.dumps(state)))
    for a, b in zip(straight[1:], resumed):
        for x, y in zip(a, b):
            _same(x, y)


def test_a_raw_folder_without_encoders_and_encoders_on_an_encoded_folder_are_refused(raw, encoded, encoders):
    with pytest.raises(DataError, match="set spec.data.encoders"):
        ShardReader(raw)
    with pytest.raises(DataError, match="spec.data.encoders is for raw shards"):
        ShardReader(encoded, row_decoder=OnlineEncoding(encoders, clip_root(raw)).plan)


def test_a_clip_that_changed_since_packing_fails_naming_it(raw, encoders, tmp_path):
    online = OnlineEncoding(encoders, clip_root(raw), on_corrupt="fail")
    _, planned = next(ShardReader(raw, row_decoder=online.plan))
    planned.raw.video = planned.raw.video[:200]
    with pytest.raises(DataError, match=planned.raw.source):
        online.materialize(planned)
    skipping = OnlineEncoding(encoders, clip_root(raw), on_corrupt="skip")
    assert skipping.materialize(planned) is None


@pytest.mark.slow
def test_two_trainer_processes_on_raw_clips_end_with_the_parameters_of_pre_encoded_training(raw, encoded, tmp_path):
    finals = {}
    for name, folder, encoders in (("online", raw, ENCODERS.to_wire()), ("pre", encoded, None)):
        root = tmp_path / name
        data = config_dict(root, steps=3)
        data["spec"]["data"] = {"path": str(folder), "tokenBudget": 160}
        if encoders is not None:
            data["spec"]["data"]["encoders"] = encoders
        data["spec"]["model"] = {"preset": "tiny", "textDim": 384}
        data["spec"]["parallelism"] = {"nodes": 1, "gpusPerNode": 2, "microBatches": 2}
        data["spec"]["checkpoint"]["intervalSteps"] = 3
        proc = torchrun_train(write_config(tmp_path / f"{name}.yaml", data), tmp_path / f"termination-{name}")
        assert "step 3/3" in proc.stdout
        finals[name] = read_model_state(root / "local" / "looptest" / "step-3")
    online, pre = finals["online"], finals["pre"]
    assert online.keys() == pre.keys()
    assert all(torch.equal(online[k], pre[k]) for k in online)


def test_the_spec_refuses_encoders_beside_a_synthetic_dataset_or_for_dpo():
    from omnitrain.spec import JobSpec, validate_job_spec

    def fields(**data):
        return [e.field for e in validate_job_spec(JobSpec.model_validate(data)) if "encoders" in e.message]

    assert fields(data={"encoders": {}}) == []
    assert fields(data={"encoders": {}, "synthetic": {}}) == ["spec.data.encoders"]
    assert fields(data={"encoders": {}, "synthetic": {"kind": "clips"}}) == []
    clips_alone = validate_job_spec(JobSpec.model_validate({"data": {"synthetic": {"kind": "clips"}}}))
    assert [e.field for e in clips_alone if "clips are raw" in e.message] == ["spec.data.synthetic.kind"]
    assert fields(data={"encoders": {}}, training={"stage": "dpo", "initFrom": "/x"}) == ["spec.data.encoders"]
    wire = JobSpec.model_validate({"data": {"encoders": {"vae": {"config": {"base_dim": 16}}}}}).to_wire()
    assert wire["data"]["encoders"]["vae"]["config"] == {"base_dim": 16}  # the VAE's own names stay as they are


def test_a_synthetic_clip_dataset_is_rendered_packed_and_trained_on_with_online_encoding(tmp_path):
    from omnitrain.spec import TrainerConfig
    from omnitrain.trainer.data.reader import read_manifest
    from omnitrain.trainer.train import train

    data = config_dict(tmp_path, steps=3)
    data["spec"]["data"] = {
        "path": str(tmp_path / "data"),
        "synthetic": {"kind": "clips", "samples": 6, "shards": 2},
        "encoders": ENCODERS.to_wire(),
        "tokenBudget": 160,
    }
    data["spec"]["model"] = {"preset": "tiny", "textDim": 384}
    result = train(TrainerConfig.model_validate(data), callbacks=[], log=lambda *_, **__: None)
    assert len(result.losses) == 3
    assert read_manifest(tmp_path / "data")["kind"] == "raw"
    assert len(list((tmp_path / "data" / "clips").glob("clip-*[0-9].mp4"))) == 6


def test_with_pre_encode_the_trainer_reads_the_encoded_folder_and_runs_no_encoder(raw, encoded, tmp_path):
    from omnitrain.spec import TrainerConfig
    from omnitrain.trainer.train import train
    from omnitrain.training_hooks import TrainerHooks

    class Seen(TrainerHooks):
        encode_seconds: list = []

        def on_step_end(self, *, state, stats):
            self.encode_seconds.append(stats.encode_seconds)

    data = config_dict(tmp_path, steps=2)
    data["spec"]["data"] = {
        "path": str(raw),
        "encoders": ENCODERS.to_wire(),
        "preEncode": {"path": str(encoded)},
        "tokenBudget": 160,
    }
    data["spec"]["model"] = {"preset": "tiny", "textDim": 384}
    seen = Seen()
    result = train(TrainerConfig.model_validate(data), callbacks=[seen], log=lambda *_, **__: None)
    assert len(result.losses) == 2 and seen.encode_seconds == [None, None]
    assert result.state.data_loader.reader.folder == encoded
