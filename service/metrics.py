"""Prometheus metrics of one service instance, in their own registry (no module-level state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)
STAGES = ("receive", "decode", "queue", "encode", "search", "fetch")
"""Per-request stages: reading the body, parsing and validating it, waiting for a micro-batch, ONNX encoding (of
the request's micro-batch), FAISS search, and building the response from the index (ids, descriptors, models)."""


class ServiceMetrics:
    """Request counts and latencies per endpoint, latencies per stage, batch sizes, index and model info."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("seisbind_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("seisbind_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("seisbind_stage_seconds", "Time per request in each stage, by endpoint",
                               ["endpoint", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("seisbind_batch_gathers", "Gathers encoded together per micro-batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.index_entries = Gauge("seisbind_index_entries", "Entries in the index being served", registry=r)
        self.index_info = Gauge("seisbind_index_info", "The index version being served (value 1)",
                                ["version", "bundle_id", "index_type"], registry=r)
        self.model_info = Gauge("seisbind_model_info", "The encoder bundle and execution providers (value 1)",
                                ["bundle_id", "providers"], registry=r)
        self.ready = Gauge("seisbind_ready", "1 when encoders and an index are loaded", registry=r)
        self.rebuilds = Counter("seisbind_rebuilds", "Admin index rebuilds by outcome", ["outcome"], registry=r)
        self.swaps = Counter("seisbind_index_swaps", "Index versions swapped in while serving", registry=r)

    def set_index(self, version: str | None, bundle_id: str, index_type: str, count: int) -> None:
        """Record the index now served (or none)."""
        self.index_info.clear()
        if version is not None:
            self.index_info.labels(version, bundle_id, index_type).set(1)
        self.index_entries.set(count)
        self.ready.set(1 if version is not None else 0)

    def set_model(self, bundle_id: str, providers: list[str]) -> None:
        """Record the encoder bundle and the execution providers in use."""
        self.model_info.clear()
        self.model_info.labels(bundle_id, ",".join(providers)).set(1)

    def observe_stages(self, endpoint: str, seconds: dict[str, float]) -> None:
        """Record a request's time in each stage it went through."""
        for stage, s in seconds.items():
            self.stage.labels(endpoint, stage).observe(s)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
