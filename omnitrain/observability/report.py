"""`omnitrain report`: a PNG and an HTML page about one job, from its metrics log (omnitrain.metrics_log) and status.

Panels: loss per step (coloured by attempt, restarts marked), throughput (tokens/s and MFU), step time with checkpoint
blocking, and the goodput timeline over wall-clock time with restarts and down time marked. `summarise` is a pure
function of the log; the plotting and the HTML only draw what it returns.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from omnitrain.metrics_log import JobLog
from omnitrain.resilience.goodput import Event, EventKind, compute_goodput, events_from_metrics_log
from omnitrain.status import JobStatus
from omnitrain.timestamps import parse_rfc3339


@dataclass
class AttemptSummary:
    attempt: int
    start_time: float
    resumed_from: int
    first_step: int | None = None
    last_step: int | None = None
    last_time: float | None = None
    end_reason: str | None = None


@dataclass
class JobSummary:
    """What the report shows. Goodput and badput come from omnitrain.resilience.goodput over the whole log (in
    hindsight: wasted steps are known only after a restart redid them); the timeline shows goodput as it stood at
    each moment."""

    attempts: list[AttemptSummary]
    steps: list[dict]  # step records, each with "wasted": bool
    t0: float | None
    wall_seconds: float
    productive_seconds: float
    badput_seconds: dict[str, float]
    goodput_timeline: list[tuple[float, float]] = field(default_factory=list)  # (seconds since t0, goodput so far)
    checkpoints: list[dict] = field(default_factory=list)

    @property
    def goodput(self) -> float | None:
        return self.productive_seconds / self.wall_seconds if self.wall_seconds > 0 else None


def events_from_log(log: JobLog, job_started: float | None = None) -> list[Event]:
    """The metrics log as omnitrain.resilience.goodput events (one accounting of goodput for the whole project).
    With the job's start (status.startTime) its wall time counts from there, as the trainer's own figure in
    status.goodput does; without it, from the first attempt's start record."""
    return events_from_metrics_log(log.records, job_started=job_started)


# Each timeline point recomputes goodput from the events up to it: keep the work bounded for long jobs.
TIMELINE_EVENT_BUDGET = 2_000_000


def summarise(log: JobLog, job_started: float | None = None) -> JobSummary:
    starts = sorted(log.of_kind("start"), key=lambda r: (r["attempt"], r["time"]))
    attempts = {r["attempt"]: AttemptSummary(r["attempt"], r["time"], int(r.get("step") or 0)) for r in starts}
    records = sorted(log.records, key=lambda r: r["time"])
    steps = [dict(r) for r in records if r["kind"] == "step"]
    for r in records:
        a = attempts.setdefault(r["attempt"], AttemptSummary(r["attempt"], r["time"], 0))
        a.last_time = r["time"]
        if r["kind"] == "step":
            a.first_step = r["step"] if a.first_step is None else a.first_step
            a.last_step = r["step"]
        if r["kind"] == "end":
            a.end_reason = r.get("reason")
    ordered = [attempts[k] for k in sorted(attempts)]
    # Marked for the plots only (the accounting is compute_goodput's): steps a later attempt redid.
    for s in steps:
        later = [a.resumed_from for a in ordered if a.attempt > s["attempt"]]
        s["wasted"] = bool(later) and s["step"] > min(later)

    events = events_from_log(log, job_started)
    report = compute_goodput(events)
    t0 = events[0].time if events else None
    timeline: list[tuple[float, float]] = []
    if events:
        # Cut after step events only: between an attempt's start and its first step (or restore) the accounting
        # cannot yet know where it resumed from.
        step_ends = [i + 1 for i, e in enumerate(events) if e.kind is EventKind.STEP]
        points = max(10, min(150, TIMELINE_EVENT_BUDGET // len(events)))
        stride = max(1, len(step_ends) // points)
        cuts = sorted(set(step_ends[stride - 1 :: stride]) | {len(events)})
        for cut in cuts:
            partial = compute_goodput(events[:cut])
            if partial.wall_seconds > 0:
                timeline.append((events[cut - 1].time - t0, partial.goodput))
    return JobSummary(
        attempts=ordered,
        steps=steps,
        t0=t0,
        wall_seconds=report.wall_seconds,
        productive_seconds=report.productive_seconds,
        badput_seconds=report.badput_seconds,
        goodput_timeline=timeline,
        checkpoints=log.of_kind("checkpoint"),
    )


def _time_unit(seconds: float) -> tuple[str, float]:
    """An axis unit that keeps the numbers readable: seconds for a test run, hours for a real one."""
    if seconds < 180:
        return "seconds", 1.0
    if seconds < 3 * 3600:
        return "minutes", 60.0
    return "hours", 3600.0


def plot_report(summary: JobSummary, title: str, path: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), constrained_layout=True)
    fig.suptitle(title, fontsize=14)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    by_attempt = {}
    for s in summary.steps:
        by_attempt.setdefault(s["attempt"], []).append(s)
    restart_steps = [a.resumed_from for a in summary.attempts[1:]]

    ax = axes[0, 0]
    for i, (attempt, rows) in enumerate(sorted(by_attempt.items())):
        pts = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
        if pts:
            ax.plot(*zip(*pts), color=colours[i % len(colours)], lw=1.4, label=f"attempt {attempt}")
    for k, step in enumerate(restart_steps):
        ax.axvline(step, color="crimson", ls="--", lw=1, label="restart (resumed from)" if k == 0 else None)
    ax.set(title="Training loss", xlabel="step", ylabel="loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[0, 1]
    pts = [(s["step"], s["tokens_per_second"]) for s in summary.steps if s.get("tokens_per_second")]
    if pts:
        ax.plot(*zip(*pts), ".", ms=3, color=colours[0], label="tokens/s")
    ax.set(title="Throughput", xlabel="step", ylabel="tokens / s")
    ax.set_ylim(0, 1.2 * max((p[1] for p in pts), default=1))
    ax.grid(alpha=0.3)
    mfu_pts = [(s["step"], 100 * s["mfu"]) for s in summary.steps if s.get("mfu") is not None]
    if mfu_pts:
        ax2 = ax.twinx()
        ax2.plot(*zip(*mfu_pts), "x", ms=3, color=colours[1], label="MFU")
        ax2.set_ylabel("MFU (%)", color=colours[1])
        ax2.set_ylim(0, 1.2 * max(p[1] for p in mfu_pts))
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="lower right", fontsize=8)
    else:
        ax.text(
            0.5,
            0.04,
            "MFU not reported: no peak FLOP/s known for this device",
            transform=ax.transAxes,
            ha="center",
            fontsize=8,
            color="gray",
        )
    for step in restart_steps:
        ax.axvline(step, color="crimson", ls="--", lw=1)

    ax = axes[1, 0]
    pts = [(s["step"], s["step_seconds"]) for s in summary.steps if s.get("step_seconds")]
    if pts:
        ax.plot(*zip(*pts), ".", ms=3, color=colours[0], label="step time")
    blocking = [(c["step"], c["blocking_seconds"]) for c in summary.checkpoints if c.get("blocking_seconds")]
    if blocking:
        # stems, not bars: bars wide enough to see would merge when checkpoints are frequent
        ax.vlines([b[0] for b in blocking], 0, [b[1] for b in blocking], color=colours[3], lw=1.2)
        ax.plot(
            [b[0] for b in blocking], [b[1] for b in blocking], "s", ms=3, color=colours[3], label="checkpoint blocking"
        )
    ax.set(title="Step time and checkpoint blocking", xlabel="step", ylabel="seconds")
    ax.set_ylim(0, 1.25 * max([p[1] for p in pts] + [b[1] for b in blocking] + [1e-3]))
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1, 1]
    unit, scale = _time_unit(summary.wall_seconds)
    if summary.goodput_timeline:
        xs, ys = zip(*summary.goodput_timeline)
        ax.plot([x / scale for x in xs], [100 * y for y in ys], color=colours[2], lw=1.6, label="goodput so far")
    t0 = summary.t0 or 0.0
    for k, (previous, current) in enumerate(zip(summary.attempts, summary.attempts[1:])):
        if previous.last_time is not None:
            ax.axvspan(
                (previous.last_time - t0) / scale,
                (current.start_time - t0) / scale,
                color="crimson",
                alpha=0.15,
                label="down (restart)" if k == 0 else None,
            )
        ax.axvline((current.start_time - t0) / scale, color="crimson", ls="--", lw=1)
    ax.axhline(90, color="gray", ls=":", lw=1, label="90% alert threshold")
    goodput = summary.goodput
    ax.set(
        title=f"Goodput timeline (final {100 * goodput:.1f}%)" if goodput is not None else "Goodput timeline",
        xlabel=f"wall-clock {unit} since job start",
        ylabel="goodput (%)",
        ylim=(0, 105),
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _row(label: str, value) -> str:
    return f"<tr><th>{html.escape(label)}</th><td>{html.escape(str(value))}</td></tr>"


def render_html(summary: JobSummary, title: str, png_name: str, status: JobStatus | None = None) -> str:
    status = status or JobStatus()
    kept = [s for s in summary.steps if not s["wasted"]]
    last_loss = next((s["loss"] for s in reversed(kept) if s.get("loss") is not None), None)
    mfus = [s["mfu"] for s in kept if s.get("mfu") is not None]
    tps = [s["tokens_per_second"] for s in kept if s.get("tokens_per_second")]
    rows = [
        _row("phase", status.phase or "-"),
        _row("steps", f"{kept[-1]['step'] if kept else 0} / {status.total_steps or '-'}"),
        _row("attempts", len(summary.attempts)),
        _row("final loss", f"{last_loss:.4g}" if last_loss is not None else "-"),
        _row("mean MFU", f"{100 * sum(mfus) / len(mfus):.2f}%" if mfus else "not reported (no peak FLOP/s)"),
        _row("mean tokens/s", f"{sum(tps) / len(tps):.1f}" if tps else "-"),
        _row("wall time", f"{summary.wall_seconds:.1f} s"),
        _row("goodput (from the log)", f"{100 * summary.goodput:.1f}%" if summary.goodput is not None else "-"),
    ]
    if status.goodput is not None and status.goodput.get("ratio") is not None:
        rows.append(_row("goodput (job status)", f"{100 * float(status.goodput['ratio']):.1f}%"))
    badput = "".join(_row(cause, f"{seconds:.1f} s") for cause, seconds in summary.badput_seconds.items())
    attempts = "".join(
        f"<tr><td>{a.attempt}</td><td>{a.resumed_from}</td><td>{a.last_step if a.last_step is not None else '-'}"
        f"</td><td>{html.escape(str(a.end_reason or 'ended without a record (killed?)'))}</td></tr>"
        for a in summary.attempts
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:1em 0}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}} img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<img src="{html.escape(png_name)}" alt="loss, throughput, step time and goodput of the job">
<h2>Summary</h2><table>{"".join(rows)}</table>
<h2>Badput by cause</h2><table>{badput}</table>
<h2>Attempts</h2><table><tr><th>attempt</th><th>resumed from step</th><th>last step</th><th>end</th></tr>
{attempts}</table>
</body></html>
"""


def write_report(
    log: JobLog,
    out_dir: str | os.PathLike,
    job_name: str,
    status: JobStatus | None = None,
    job_created: float | None = None,
) -> tuple[Path, Path]:
    """Write <out>/report.png and <out>/report.html; returns both paths. Goodput counts from job_created (the
    job's metadata.creationTimestamp, where the trainer's status.goodput counts from), else status.startTime, else
    the first attempt's start."""
    if not log.of_kind("step"):
        raise ValueError(
            "the metrics log has no step records yet; run the job for at least one step "
            "(or point --metrics-dir at the job's <persistentPath>/<job>/metrics folder)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = job_created if job_created is not None else parse_rfc3339(status.start_time if status else None)
    summary = summarise(log, started)
    title = f"OmniTrainingJob {job_name}"
    png = plot_report(summary, title, out / "report.png")
    page = out / "report.html"
    page.write_text(render_html(summary, title, png.name, status), encoding="utf-8")
    return png, page


__all__ = ["AttemptSummary", "JobSummary", "plot_report", "render_html", "summarise", "write_report"]
