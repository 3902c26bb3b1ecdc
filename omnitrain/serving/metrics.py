"""Prometheus metrics of the inference server (its own registry: several servers may live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "omnitrain_serve_requests", "Generate requests by HTTP status code.", ["code"], registry=self.registry
        )
        self.latency = Histogram(
            "omnitrain_serve_request_seconds",
            "Latency of generate requests.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "omnitrain_serve_batch_size",
            "Requests per model batch.",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.model_evaluations = Counter(
            "omnitrain_serve_model_evaluations", "Model forward passes.", registry=self.registry
        )
        self.ready = Gauge("omnitrain_serve_ready", "1 once the model is loaded.", registry=self.registry)
        self.condition_cache_exact = Gauge(
            "omnitrain_serve_condition_cache_exact",
            "1 when serving with cached condition keys/values computes the model as trained (docs/promotion.md).",
            registry=self.registry,
        )
