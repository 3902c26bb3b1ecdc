"""`omnitrain report` from a metrics log that the callback wrote over two attempts of a real tiny training run."""

import subprocess
import sys

import pytest

from omnitrain.metrics_log import read_job_log
from omnitrain.observability.callback import MetricsCallback
from omnitrain.observability.report import summarise, write_report
from omnitrain.status import JobStatus
from omnitrain.training_hooks import StepStats


class FakeClock:
    """Wall-clock time under the test's control, so goodput arithmetic is exact (no sleeps)."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def run_attempt(log_dir, clock, attempt, resume_from, last_step, crash, restore=0.0):
    cb = MetricsCallback(
        job="demo",
        attempt=attempt,
        total_steps=12,
        world_size=1,
        rank=0,
        local_rank=0,
        metrics_port=None,
        log_dir=log_dir,
        peak_flops_per_device=1e9,
        clock=clock,
    )
    clock.t += restore  # the restore runs before the loop starts
    cb.on_train_start(step=resume_from, restore_seconds=restore or None)
    clock.t += 5.0  # 5 s of start-up (first batch, warm-up) before the first step
    for step in range(resume_from + 1, last_step + 1):
        clock.t += 2.0  # every step takes 2 s
        cb.on_step_end(stats=StepStats(step=step, loss=1.0 / step, tokens=100, flops=1e9, step_seconds=2.0))
        if step % 4 == 0:
            clock.t += 0.5
            cb.on_checkpoint_blocked(step=step, seconds=0.5)
            cb.on_checkpoint_complete(step=step)
    if not crash:
        cb.on_train_end(step=last_step, reason="Completed")
    if crash:  # a crash leaves no end record
        cb._writer.close()
    return cb


def test_summary_accounts_for_wasted_steps_and_down_time(tmp_path):
    clock = FakeClock()
    run_attempt(tmp_path, clock, attempt=0, resume_from=0, last_step=6, crash=True)
    clock.t += 30.0  # 30 s down between the crash and the next attempt
    run_attempt(tmp_path, clock, attempt=1, resume_from=4, last_step=12, crash=False, restore=1.0)
    summary = summarise(read_job_log(tmp_path))
    assert [a.resumed_from for a in summary.attempts] == [0, 4]
    assert [s["step"] for s in summary.steps if s["wasted"]] == [5, 6]  # redone by attempt 1
    assert summary.productive_seconds == pytest.approx(12 * 2.0)
    b = summary.badput_seconds
    assert b["wasted_progress"] == pytest.approx(4.0)
    assert b["checkpoint_save"] == pytest.approx(0.5 * 3)  # step 4 | steps 8, 12
    assert b["recovery"] == pytest.approx(30.0)
    assert b["checkpoint_restore"] == pytest.approx(1.0)
    assert b["startup"] == pytest.approx(5.0 + 5.0)
    assert b["other"] == pytest.approx(0.0)
    # wall = 5 + 12 + 0.5 (attempt 0) + 30 (down) + 1 + 5 + 16 + 1.0 (attempt 1)
    assert summary.wall_seconds == pytest.approx(70.5)
    assert summary.goodput == pytest.approx(24.0 / 70.5)
    assert sum(b.values()) + summary.productive_seconds == pytest.approx(summary.wall_seconds)
    assert summary.goodput_timeline[-1][1] == pytest.approx(summary.goodput)


def test_report_writes_png_and_html(tmp_path):
    clock = FakeClock()
    run_attempt(tmp_path / "log", clock, attempt=0, resume_from=0, last_step=6, crash=True)
    clock.t += 30.0
    run_attempt(tmp_path / "log", clock, attempt=1, resume_from=4, last_step=12, crash=False, restore=1.0)
    png, page = write_report(
        read_job_log(tmp_path / "log"),
        tmp_path / "out",
        "default/demo",
        status=JobStatus.from_wire(
            {"phase": "Succeeded", "totalSteps": 12, "goodput": {"ratio": 0.3404, "badputSeconds": {"recovery": 30.0}}}
        ),
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    text = page.read_text()
    assert 'src="report.png"' in text and "Succeeded" in text and "12 / 12" in text
    assert "wasted_progress" in text and "ended without a record" in text
    assert "<th>goodput (job status)</th><td>34.0%</td>" in text


def test_report_cli_offline_and_clear_errors(tmp_path):
    clock = FakeClock()
    run_attempt(tmp_path / "log", clock, attempt=0, resume_from=0, last_step=3, crash=False)
    cli = [sys.executable, "-m", "omnitrain", "report", "demo", "--offline"]
    ok = subprocess.run(
        cli + ["--out", str(tmp_path / "out"), "--metrics-dir", str(tmp_path / "log")], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "report.png").exists() and (tmp_path / "out" / "report.html").exists()
    missing = subprocess.run(
        cli + ["--out", str(tmp_path / "o2"), "--metrics-dir", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "metrics log folder" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = subprocess.run(
        cli + ["--out", str(tmp_path / "o3"), "--metrics-dir", str(tmp_path / "empty")], capture_output=True, text=True
    )
    assert empty.returncode == 1 and "no step records" in empty.stderr


def test_rank_zero_keeps_the_jobs_goodput_from_its_creation_across_attempts(tmp_path):
    """The callback of the resumed attempt reads the crashed attempt's log, counts wall time from the job's
    creation (run.jobCreated) and ends with the same accounting as the offline report plus the time before the
    first attempt started; the gauge and the final report (termination message) carry it."""
    from omnitrain.observability import trainer_metrics as tm

    clock = FakeClock()
    created = clock.t - 7.0  # 7 s from `kubectl apply` to the first attempt's start
    run_attempt(tmp_path, clock, attempt=0, resume_from=0, last_step=6, crash=True)
    clock.t += 30.0
    cb = MetricsCallback(
        job="demo",
        attempt=1,
        total_steps=12,
        world_size=1,
        rank=0,
        local_rank=0,
        metrics_port=None,
        log_dir=tmp_path,
        clock=clock,
        job_created=created,
        goodput_every_seconds=0.0,
    )
    clock.t += 1.0
    cb.on_restore(step=4, seconds=1.0)
    cb.on_train_start(step=4)
    clock.t += 5.0
    for step in range(5, 13):
        clock.t += 2.0
        cb.on_step_end(stats=StepStats(step=step, loss=0.1, tokens=100, flops=1e9, step_seconds=2.0))
        if step == 5:  # recomputed while training (every 0 s here): wall so far, productive steps so far
            mid = cb.goodput_report
            assert mid.wall_seconds == pytest.approx(7.0 + 5 + 12 + 30 + 1 + 5 + 2 + 0.5)  # 0.5: checkpoint at 4
            assert mid.productive_seconds == pytest.approx(4 * 2.0 + 2.0)  # steps 1-4 (5, 6 redone) and 5
    cb.on_train_end(step=12, reason="Completed")
    offline = summarise(read_job_log(tmp_path))
    final = cb.goodput_report
    assert final.wall_seconds == pytest.approx(offline.wall_seconds + 7.0)
    assert final.productive_seconds == pytest.approx(offline.productive_seconds)
    assert final.badput_seconds["startup"] == pytest.approx(offline.badput_seconds["startup"] + 7.0)
    assert final.badput_seconds["wasted_progress"] == pytest.approx(4.0)
    # the report, given the job's start (status.startTime), agrees with the trainer's figure
    assert summarise(read_job_log(tmp_path), job_started=created).goodput == pytest.approx(final.goodput)
    gauge = cb.metrics.registry.get_sample_value(tm.METRIC_GOODPUT, {tm.JOB_LABEL: "demo"})
    assert gauge == pytest.approx(final.goodput)
    status = final.to_status()
    assert status["ratio"] == pytest.approx(24.0 / (7.0 + 17.5 + 30 + 1 + 5 + 16), abs=1e-4)
    assert status["badputSeconds"]["recovery"] == 30.0
