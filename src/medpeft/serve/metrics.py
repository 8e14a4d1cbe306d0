"""Prometheus metrics of one server: queue depth, batch sizes, latencies, requests by status.

Each app gets its own registry, so several apps in one process (tests) do not clash.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    """The server's metrics, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "medpeft_requests", "HTTP requests by route, method and status code",
            ["route", "method", "status"], registry=self.registry,
        )
        self.request_latency = Histogram(
            "medpeft_request_duration_seconds", "HTTP request latency by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge(
            "medpeft_queue_depth", "Samples waiting for a batch", registry=self.registry
        )
        self.batch_size = Histogram(
            "medpeft_batch_size", "Samples per forward pass (any mix of tasks)",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.batch_latency = Histogram(
            "medpeft_batch_duration_seconds", "Time of one batched forward pass",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.loaded = Gauge(
            "medpeft_adapters_loaded", "Task adapters held in memory", registry=self.registry
        )

    def watch(self, queue_depth: Callable[[], float], loaded: Callable[[], float]) -> None:
        """Read the queue depth and loaded-adapter count at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.loaded.set_function(loaded)

    def observe_batch(self, size: int, seconds: float) -> None:
        """Record one batched forward pass."""
        self.batch_size.observe(size)
        self.batch_latency.observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
