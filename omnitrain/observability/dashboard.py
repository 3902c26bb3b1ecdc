"""The Grafana dashboard of manifests/monitoring/dashboards/omnitrain.json, built from the metric names in code.

Generated rather than hand-edited so a renamed metric changes the dashboard too; the test checks that the
checked-in JSON equals `build_dashboard()` and that every panel query parses (promtool).
Regenerate: python -m omnitrain.observability.dashboard > manifests/monitoring/dashboards/omnitrain.json
"""

from __future__ import annotations

import json

from omnitrain import contract
from omnitrain.observability import operator_metrics as om
from omnitrain.observability import trainer_metrics as tm

SEL = 'namespace="$namespace", omnitrain_job="$job"'
DS = {"type": "prometheus", "uid": "${datasource}"}


def _target(expr: str, legend: str, ref: str) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


def _panel(
    pid: int,
    title: str,
    targets: list[tuple[str, str]],
    grid: tuple[int, int, int, int],
    unit: str = "short",
    kind: str = "timeseries",
    stack: bool = False,
    description: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
) -> dict:
    x, y, w, h = grid
    custom = {
        "lineWidth": 1,
        "fillOpacity": 60 if stack else 10,
        "showPoints": "never",
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults: dict = {"unit": unit}
    if kind == "timeseries":
        defaults["custom"] = custom
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        }
        if kind == "timeseries"
        else {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
        "targets": [_target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)],
    }


def _row(pid: int, title: str, y: int) -> dict:
    return {
        "id": pid,
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def _variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": False,
        "multi": False,
        "sort": 1,
        "current": {},
        "options": [],
    }


def build_dashboard() -> dict:
    step_q = lambda q, m: f"histogram_quantile({q}, sum by (le) (rate({m}_bucket{{{SEL}}}[5m])))"  # noqa: E731
    panels = [
        _row(100, "Job", 0),
        _panel(
            1,
            "Progress",
            [(f"max({contract.METRIC_STEP}{{{SEL}}}) / max({contract.METRIC_TOTAL_STEPS}{{{SEL}}})", "progress")],
            (0, 1, 4, 5),
            unit="percentunit",
            kind="stat",
            minimum=0,
            maximum=1,
        ),
        _panel(
            2,
            "Goodput",
            [(f"max({om.METRIC_JOB_GOODPUT}{{{SEL}}})", "goodput")],
            (4, 1, 4, 5),
            unit="percentunit",
            kind="stat",
            minimum=0,
            maximum=1,
        ),
        _panel(3, "Attempt", [(f"max({tm.METRIC_ATTEMPT}{{{SEL}}})", "attempt")], (8, 1, 4, 5), kind="stat"),
        _panel(
            4,
            "Step / last complete checkpoint",
            [
                (f"max({contract.METRIC_STEP}{{{SEL}}})", "step"),
                (f"max({contract.METRIC_LAST_CHECKPOINT_STEP}{{{SEL}}})", "checkpoint"),
            ],
            (12, 1, 12, 5),
        ),
        _panel(
            5,
            "MFU",
            [(f"max({tm.METRIC_MFU}{{{SEL}}})", "MFU"), (f"omnitrain_job:mfu:baseline1h{{{SEL}}}", "1h baseline")],
            (0, 6, 12, 8),
            unit="percentunit",
            minimum=0,
            description="Model FLOPs / (step time x devices x peak dense FLOP/s of one device). "
            "Absent when the device's peak is unknown.",
        ),
        _panel(
            6, "Tokens / s", [(f"sum({tm.METRIC_TOKENS_PER_SECOND}{{{SEL}}})", "tokens/s")], (12, 6, 12, 8), minimum=0
        ),
        _panel(
            7,
            "Step time",
            [
                (step_q(0.5, tm.METRIC_STEP_SECONDS), "p50"),
                (step_q(0.95, tm.METRIC_STEP_SECONDS), "p95"),
                (f"omnitrain_job:step_seconds:mean5m{{{SEL}}}", "mean"),
            ],
            (0, 14, 12, 8),
            unit="s",
            minimum=0,
        ),
        _panel(8, "Loss", [(f"max({contract.METRIC_LOSS}{{{SEL}}})", "loss")], (12, 14, 12, 8)),
        _panel(
            9,
            "Goodput and badput by cause",
            [(f"max by (cause) ({om.METRIC_JOB_BADPUT}{{{SEL}}})", "{{cause}}")],
            (0, 22, 12, 8),
            unit="s",
            stack=True,
            description="Job wall time lost, stacked by cause (operator, from "
            "omnitrain.resilience.goodput); goodput is the stat at the top.",
        ),
        _panel(
            10,
            "Restarts",
            [
                (f"sum by (reason) (increase({om.METRIC_RESTARTS}_total{{{SEL}}}[1h]))", "{{reason}}"),
                (f"sum(increase({tm.METRIC_HANGS}_total{{{SEL}}}[1h]))", "hangs detected"),
            ],
            (12, 22, 12, 8),
            stack=True,
            minimum=0,
        ),
        _panel(
            11,
            "Checkpoint blocking",
            [
                (step_q(0.5, tm.METRIC_CHECKPOINT_BLOCKING), "p50"),
                (step_q(0.99, tm.METRIC_CHECKPOINT_BLOCKING), "p99"),
                (f"max({tm.METRIC_RESTORE_SECONDS}{{{SEL}}})", "last restore"),
            ],
            (0, 30, 12, 8),
            unit="s",
            minimum=0,
        ),
        _panel(
            12,
            "Checkpoint lag (steps)",
            [
                (f"omnitrain_job:checkpoint_lag_steps{{{SEL}}}", "lag"),
                (f"3 * max({tm.METRIC_CHECKPOINT_INTERVAL}{{{SEL}}})", "alert threshold"),
            ],
            (12, 30, 12, 8),
            minimum=0,
        ),
        _row(101, "Nodes", 38),
        _panel(
            13,
            "GPU utilisation",
            [(f"{tm.METRIC_GPU_UTILIZATION}{{{SEL}}}", "{{node}} gpu{{gpu}}")],
            (0, 39, 12, 8),
            unit="percentunit",
            minimum=0,
            maximum=1,
        ),
        _panel(
            14,
            "GPU memory used",
            [(f"{tm.METRIC_GPU_MEMORY_USED}{{{SEL}}}", "{{node}} gpu{{gpu}}")],
            (12, 39, 12, 8),
            unit="bytes",
            minimum=0,
        ),
        _panel(
            15,
            "GPU power",
            [(f"{tm.METRIC_GPU_POWER}{{{SEL}}}", "{{node}} gpu{{gpu}}")],
            (0, 47, 12, 8),
            unit="watt",
            minimum=0,
        ),
        _panel(
            16,
            "GPU temperature",
            [(f"{tm.METRIC_GPU_TEMPERATURE}{{{SEL}}}", "{{node}} gpu{{gpu}}")],
            (12, 47, 12, 8),
            unit="celsius",
        ),
        _row(102, "Operator", 55),
        _panel(
            17,
            "Jobs by phase",
            [(f"sum by (phase) ({om.METRIC_JOBS})", "{{phase}}")],
            (0, 56, 12, 8),
            stack=True,
            minimum=0,
        ),
        _panel(
            18,
            "Reconcile duration p95",
            [
                (
                    f"histogram_quantile(0.95, sum by (le, handler) (rate({om.METRIC_RECONCILE}_bucket[5m])))",
                    "{{handler}}",
                )
            ],
            (12, 56, 12, 8),
            unit="s",
            minimum=0,
        ),
    ]
    return {
        "uid": "omnitrain-job",
        "title": "omnitrain: training job",
        "tags": ["omnitrain"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "graphTooltip": 1,
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "options": [],
                    "refresh": 1,
                },
                _variable("namespace", "Namespace", f"label_values({contract.METRIC_STEP}, namespace)"),
                _variable(
                    "job", "Job", f'label_values({contract.METRIC_STEP}{{namespace="$namespace"}}, omnitrain_job)'
                ),
            ]
        },
        "annotations": {
            "list": [
                {
                    "name": "Restarts",
                    "datasource": DS,
                    "enable": True,
                    "iconColor": "red",
                    "expr": f"changes({tm.METRIC_ATTEMPT}{{{SEL}}}[2m]) > 0",
                    "titleFormat": "gang restart",
                }
            ]
        },
        "panels": panels,
    }


def panel_queries(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])] + [
        a["expr"] for a in dashboard["annotations"]["list"]
    ]


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(render())
