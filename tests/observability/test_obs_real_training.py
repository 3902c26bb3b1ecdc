"""Scrape the endpoint of a real (tiny MMDiT, CPU) training run built with the loop's default callbacks."""

import dataclasses
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from omnitrain import contract
from omnitrain.metrics_log import read_job_log
from omnitrain.observability import trainer_metrics as tm
from omnitrain.observability.callback import MetricsCallback
from omnitrain.observability.report import summarise, write_report
from omnitrain.spec import TrainerConfig
from omnitrain.trainer.callbacks import default_callbacks
from omnitrain.trainer.parallel.testing import free_port
from omnitrain.trainer.train import train
from omnitrain.training_hooks import TrainerHooks

PEAK = 2e10  # a configured per-device peak: on CPU MFU exists only relative to one


class StepRecorder(TrainerHooks):
    def __init__(self):
        self.steps = []

    def on_step_end(self, *, state, stats):
        self.steps.append(dataclasses.asdict(stats))


@pytest.mark.slow
def test_real_training_run_exports_plausible_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNITRAIN_PEAK_FLOPS", str(PEAK))
    monkeypatch.setenv(contract.ENV_POD_IP, "127.0.0.1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    steps = 6
    config = TrainerConfig.model_validate(
        {
            "spec": {
                "data": {"path": str(tmp_path / "data"), "synthetic": {"samples": 48, "shards": 2}, "tokenBudget": 512},
                "training": {"steps": steps, "learningRate": 3e-3, "warmupSteps": 2, "logEvery": 3},
                "checkpoint": {
                    "localPath": str(tmp_path / "local"),
                    "persistentClaim": "pv",
                    "persistentPath": str(tmp_path / "pv"),
                    "intervalSteps": 3,
                },
                "metricsPort": free_port(),
            },
            "run": {"jobName": "real", "attempt": 0},
        }
    )
    recorder = StepRecorder()
    callbacks = default_callbacks(config) + [recorder]
    metrics = next(cb for cb in callbacks if isinstance(cb, MetricsCallback))
    try:
        train(config, callbacks=callbacks, log=lambda *a, **k: None)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.bound_port}/metrics", timeout=10) as response:
            families = {f.name: f.samples for f in text_string_to_metric_families(response.read().decode())}
    finally:
        metrics.close()

    def one(name, sample=None):
        values = [s.value for s in families[name] if sample is None or s.name == sample]
        assert len(values) == 1, (name, families[name])
        return values[0]

    last = recorder.steps[-1]
    assert one(contract.METRIC_STEP) == steps and one(contract.METRIC_TOTAL_STEPS) == steps
    assert one(contract.METRIC_LOSS) == pytest.approx(last["loss"])
    assert 0 < one(contract.METRIC_LOSS) < 10
    assert one(contract.METRIC_LAST_CHECKPOINT_STEP) == steps  # interval 3 and the final save
    assert one(tm.METRIC_CHECKPOINT_BLOCKING, tm.METRIC_CHECKPOINT_BLOCKING + "_count") >= 2
    assert one(tm.METRIC_STEP_SECONDS, tm.METRIC_STEP_SECONDS + "_count") == steps
    assert one(tm.METRIC_TOKENS_PER_SECOND) == pytest.approx(last["tokens"] / last["step_seconds"])
    # tiny preset: ~0.32M parameters, ~0.21M of them act on every token (adaLN and the timestep MLP: per sample)
    assert last["flops"] > 6 * 200_000 * last["tokens"]
    achieved = one(tm.METRIC_MODEL_FLOPS)
    assert achieved == pytest.approx(last["flops"] / last["step_seconds"])
    assert one(tm.METRIC_MFU) == pytest.approx(achieved / PEAK)
    assert one(tm.METRIC_WORLD_SIZE) == 1 and one(tm.METRIC_ATTEMPT) == 0

    log = read_job_log(tmp_path / "pv" / "real" / "metrics")
    assert [r["step"] for r in log.of_kind("step")] == list(range(1, steps + 1))
    assert log.of_kind("end")[0]["reason"] == "Completed"
    summary = summarise(log)
    assert 0 < summary.goodput <= 1 and summary.badput_seconds["checkpoint_save"] > 0
    png, page = write_report(log, tmp_path / "report", "default/real")
    assert png.stat().st_size > 20_000 and "real" in page.read_text()
