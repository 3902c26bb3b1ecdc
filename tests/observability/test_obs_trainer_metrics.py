"""A real (tiny) PyTorch training run drives the metrics callback; the test scrapes its HTTP endpoint."""

import json
import time
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from omnitrain import contract
from omnitrain.metrics_log import StepLogWriter, read_job_log
from omnitrain.observability import trainer_metrics as tm
from omnitrain.observability.callback import MetricsCallback, metrics_log_dir
from omnitrain.observability.gpu_telemetry import GpuTelemetry
from omnitrain.spec import JobSpec, RunInfo, TrainerConfig
from omnitrain.training_hooks import StepStats

PEAK = 5e10  # configured per-device peak for this CPU run (FLOP/s); MFU on CPU is only ever relative to this


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(families, family, sample_name=None, **labels):
    matches = [
        s
        for s in families[family]
        if (sample_name is None or s.name == sample_name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (family, sample_name, labels, families[family])
    return matches[0].value


def tiny_training_run(callback: MetricsCallback, steps: int, batch: int = 8, seq: int = 16) -> list[dict]:
    """A real optimisation loop on a two-layer MLP; reports what a training loop reports."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(batch, seq, 32)
    y = torch.randn(batch, seq, 32)
    history = []
    callback.on_train_start(step=0)
    for step in range(1, steps + 1):
        started = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds = time.perf_counter() - started
        tokens = batch * seq
        flops = 6 * params * tokens
        callback.on_step_end(
            stats=StepStats(step=step, loss=loss.item(), tokens=tokens, flops=flops, step_seconds=seconds)
        )
        history.append({"step": step, "loss": loss.item(), "seconds": seconds, "tokens": tokens, "flops": flops})
        if step % 2 == 0:
            callback.on_checkpoint_blocked(step=step, seconds=0.002)
            callback.on_checkpoint_complete(step=step)
    return history


@pytest.fixture
def callback(tmp_path):
    cb = MetricsCallback(
        job="demo",
        attempt=1,
        total_steps=5,
        world_size=1,
        rank=0,
        local_rank=0,
        node="node-a",
        metrics_addr="127.0.0.1",
        metrics_port=0,
        log_dir=tmp_path / "metrics",
        peak_flops_per_device=PEAK,
        checkpoint_interval=2,
    )
    yield cb
    cb.close()


def test_endpoint_serves_job_figures_of_a_real_run(callback, tmp_path):
    # the watchdog that ended attempt 0 wrote a hang record; attempt 1 (this one) counts it when it starts
    StepLogWriter(tmp_path / "metrics", attempt=0).write("hang", time.time() - 60, step=5, stalled_ranks=[0])
    history = tiny_training_run(callback, steps=5)
    callback.on_goodput(goodput=0.93, badput_seconds={"checkpoint_save": 1.5, "startup": 3.0})
    f = scrape(callback.bound_port)
    last = history[-1]
    assert value(f, contract.METRIC_STEP, omnitrain_job="demo") == 5
    assert value(f, contract.METRIC_TOTAL_STEPS) == 5
    assert value(f, contract.METRIC_LOSS) == pytest.approx(last["loss"], rel=1e-6)
    assert value(f, contract.METRIC_LAST_CHECKPOINT_STEP) == 4
    assert value(f, tm.METRIC_ATTEMPT) == 1
    assert value(f, contract.METRIC_GENERATION) == 1  # the generation is the attempt
    assert value(f, tm.METRIC_WORLD_SIZE) == 1
    assert value(f, tm.METRIC_CHECKPOINT_INTERVAL) == 2
    assert value(f, tm.METRIC_STEP_SECONDS, tm.METRIC_STEP_SECONDS + "_count") == 5
    assert value(f, tm.METRIC_STEP_SECONDS, tm.METRIC_STEP_SECONDS + "_sum") == pytest.approx(
        sum(h["seconds"] for h in history), rel=1e-6
    )
    assert value(f, tm.METRIC_CHECKPOINT_BLOCKING, tm.METRIC_CHECKPOINT_BLOCKING + "_count") == 2
    assert value(f, tm.METRIC_TOKENS_PER_SECOND) == pytest.approx(last["tokens"] / last["seconds"], rel=1e-6)
    achieved = value(f, tm.METRIC_MODEL_FLOPS)
    assert achieved == pytest.approx(last["flops"] / last["seconds"], rel=1e-6)
    assert value(f, tm.METRIC_MFU) == pytest.approx(achieved / PEAK, rel=1e-6)
    assert value(f, tm.METRIC_PEAK_FLOPS) == PEAK
    assert value(f, tm.METRIC_HANGS, tm.METRIC_HANGS + "_total") == 1
    assert value(f, tm.METRIC_GOODPUT) == 0.93
    assert value(f, tm.METRIC_BADPUT, cause="startup") == 3.0
    # node figures from the same endpoint (local rank 0); no GPU here, so no GPU series, but the process is seen
    assert value(f, "process_resident_memory_bytes") > 0
    assert not GpuTelemetry().available
    assert all(not f.get(name) for name in (tm.METRIC_GPU_UTILIZATION, tm.METRIC_GPU_MEMORY_USED))


def test_loss_falls_and_is_logged_per_step(callback, tmp_path):
    history = tiny_training_run(callback, steps=5)
    callback.on_train_end(step=5, reason="Completed")
    assert history[-1]["loss"] < history[0]["loss"]  # it really trained
    log = read_job_log(tmp_path / "metrics")
    steps = log.of_kind("step")
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in steps] == pytest.approx([h["loss"] for h in history])
    assert all(r["attempt"] == 1 and 0 < r["mfu"] for r in steps)
    assert [r["step"] for r in log.of_kind("checkpoint") if r.get("complete")] == [2, 4]
    assert log.of_kind("start")[0]["peak_flops"] == PEAK
    assert log.of_kind("end")[0]["reason"] == "Completed"


def test_cpu_run_without_configured_peak_reports_no_mfu(tmp_path):
    cb = MetricsCallback(
        job="demo",
        attempt=0,
        total_steps=2,
        world_size=1,
        rank=0,
        local_rank=0,
        metrics_addr="127.0.0.1",
        metrics_port=0,
        log_dir=tmp_path,
        peak_flops_per_device=None,
    )
    try:
        tiny_training_run(cb, steps=2)
        f = scrape(cb.bound_port)
        assert not f[tm.METRIC_MFU] and not f[tm.METRIC_PEAK_FLOPS]  # declared, never set: no invented value
        assert value(f, tm.METRIC_MODEL_FLOPS) > 0
    finally:
        cb.close()


def test_roles_other_ranks_serve_node_figures_or_nothing(tmp_path):
    node_rank0 = MetricsCallback(
        job="demo",
        attempt=0,
        total_steps=3,
        world_size=4,
        rank=2,
        local_rank=0,
        node="node-b",
        metrics_addr="127.0.0.1",
        metrics_port=0,
        log_dir=tmp_path,
    )
    worker = MetricsCallback(
        job="demo",
        attempt=0,
        total_steps=3,
        world_size=4,
        rank=3,
        local_rank=1,
        metrics_addr="127.0.0.1",
        metrics_port=0,
        log_dir=tmp_path,
    )
    try:
        for cb in (node_rank0, worker):
            cb.on_train_start(step=0)
            cb.on_step_end(stats=StepStats(step=1, loss=1.0, tokens=10, flops=100.0, step_seconds=0.1))
            cb.on_train_end(step=1)
        assert worker.metrics is None and worker.bound_port is None
        f = scrape(node_rank0.bound_port)
        assert contract.METRIC_STEP not in f and "process_resident_memory_bytes" in f
        assert not any(tmp_path.iterdir())  # only global rank 0 writes the job's log
    finally:
        node_rank0.close()
        worker.close()


def test_from_config_reads_the_pod_environment(tmp_path):
    spec = JobSpec.model_validate(
        {
            "training": {"steps": 7, "precision": "fp32"},
            "checkpoint": {"persistentClaim": "ckpt", "persistentPath": str(tmp_path), "intervalSteps": 3},
        }
    )
    config = TrainerConfig(spec=spec, run=RunInfo(job_name="from-spec", attempt=0))
    env = {
        contract.ENV_JOB_NAME: "job-x",
        contract.ENV_ATTEMPT: "2",
        contract.ENV_METRICS_PORT: "0",
        contract.ENV_POD_IP: "127.0.0.1",
        contract.ENV_NODE_NAME: "n1",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "OMNITRAIN_PEAK_FLOPS": "1e9",
    }
    cb = MetricsCallback.from_config(config, environ=env)
    try:
        assert (cb.job, cb.attempt, cb.total_steps, cb.peak_flops_per_device) == ("job-x", 2, 7, 1e9)
        assert cb.log_dir == metrics_log_dir(spec.checkpoint, "from-spec") == tmp_path / "from-spec" / "metrics"
        cb.on_train_start(step=3, restore_seconds=0.5)
        f = scrape(cb.bound_port)
        assert value(f, contract.METRIC_STEP, omnitrain_job="job-x") == 3
        assert value(f, tm.METRIC_RESTORE_SECONDS) == 0.5
        cb.on_train_end(step=3)
        start = read_job_log(cb.log_dir).of_kind("start")[0]
        assert (start["attempt"], start["step"]) == (2, 3)
    finally:
        cb.close()


def test_torn_last_line_is_skipped_not_fatal(tmp_path):
    (tmp_path / "attempt-0000.jsonl").write_text(json.dumps({"kind": "step", "step": 1, "attempt": 0}) + '\n{"kin')
    log = read_job_log(tmp_path)
    assert len(log.records) == 1 and log.skipped_lines == 1
    with pytest.raises(FileNotFoundError, match="attempt-"):
        read_job_log(tmp_path / "missing")


@pytest.mark.skipif(not GpuTelemetry().available, reason="no NVML/GPU on this machine (the CPU path is tested above)")
def test_gpu_series_on_a_machine_with_nvml(tmp_path):
    from omnitrain.observability.peaks import lookup_device

    telemetry = GpuTelemetry()
    readings = telemetry.read()
    assert readings and all(r.memory_total_bytes and r.memory_total_bytes > 0 for r in readings)
    assert all(r.utilization is None or 0 <= r.utilization <= 1 for r in readings)
    print("NVML names:", telemetry.device_names(), "peaks:", [lookup_device(n) for n in telemetry.device_names()])
    cb = MetricsCallback(
        job="gpu",
        attempt=0,
        total_steps=1,
        world_size=1,
        rank=0,
        local_rank=0,
        node="n",
        metrics_addr="127.0.0.1",
        metrics_port=0,
        log_dir=tmp_path,
    )
    try:
        cb.on_train_start(step=0)
        f = scrape(cb.bound_port)
        assert len(f[tm.METRIC_GPU_MEMORY_TOTAL]) == len(readings)
    finally:
        cb.close()


def test_spec_peak_is_used_when_the_environment_sets_none(tmp_path):
    spec = JobSpec.model_validate({"peakFlopsPerDevice": 2.5e11, "checkpoint": {"localPath": str(tmp_path)}})
    config = TrainerConfig(spec=spec, run=RunInfo(job_name="j"))
    env = {contract.ENV_METRICS_PORT: "0", contract.ENV_POD_IP: "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0"}
    cb = MetricsCallback.from_config(config, environ=env)
    cb.close()
    assert cb.peak_flops_per_device == 2.5e11
    assert cb.log_dir == tmp_path / "j" / "metrics"  # no persistent claim: the node-local disk
    with_env = MetricsCallback.from_config(config, environ={**env, "OMNITRAIN_PEAK_FLOPS": "1e9"})
    with_env.close()
    assert with_env.peak_flops_per_device == 1e9
    with pytest.raises(ValueError, match="peakFlopsPerDevice|greater than 0"):
        JobSpec.model_validate({"peakFlopsPerDevice": 0})


def test_busy_metrics_port_does_not_stop_training(tmp_path, caplog):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cb = MetricsCallback(
            job="demo",
            attempt=0,
            total_steps=2,
            world_size=1,
            rank=0,
            local_rank=0,
            metrics_addr="127.0.0.1",
            metrics_port=port,
            log_dir=tmp_path,
        )
        try:
            with caplog.at_level("ERROR"):
                history = tiny_training_run(cb, steps=2)
            assert len(history) == 2 and cb.bound_port is None
            assert "set spec.metricsPort to a free port" in caplog.text
            assert [r["step"] for r in read_job_log(tmp_path).of_kind("step")] == [1, 2]  # the log still works
        finally:
            cb.close()


def test_goodput_counts_the_restart_barrier_of_the_running_generation(tmp_path):
    """In-place restart: node rank 0's watchdog wrote this generation's `generation` record (dated at the
    announcement) into this attempt's file before starting the trainer; rank 0's live goodput must see it."""
    log_dir = tmp_path / "metrics"
    earlier = StepLogWriter(log_dir, attempt=0)
    earlier.write("start", 100.0, step=0)
    earlier.write("step", 102.0, step=1, step_seconds=2.0)
    earlier.close()
    StepLogWriter(log_dir, attempt=1).write("generation", 110.0, generation=1, nnodes=1, started=111.0)
    now = [115.0]
    cb = MetricsCallback(
        job="demo",
        attempt=1,
        total_steps=2,
        world_size=1,
        rank=0,
        local_rank=0,
        metrics_port=None,
        log_dir=log_dir,
        clock=lambda: now[0],
    )
    try:
        cb.on_train_start(step=1)
        now[0] = 117.0
        cb.on_step_end(stats=StepStats(step=2, step_seconds=2.0))
        cb.on_train_end(step=2)
        assert cb.goodput_report is not None
        badput = cb.goodput_report.badput_seconds
        assert badput["recovery"] == pytest.approx(110 - 102)  # last sign of life -> announcement
        assert badput["restart_barrier"] == pytest.approx(115 - 110)  # announcement -> first step begins
        assert badput["startup"] == 0
    finally:
        cb.close()
