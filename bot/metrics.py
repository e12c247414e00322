"""Prometheus metrics, one registry per bot so several bots (tests) can live in one process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter("easel_commands", "Commands handled, by name and outcome", ["command", "outcome"], registry=r)
        self.errors = Counter("easel_errors", "Commands that did not succeed, by kind", ["kind"], registry=r)
        self.model_seconds = Histogram("easel_model_seconds", "Time the network ran for the batch a job was in",
                                       ["task"], registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.batch_size = Histogram("easel_batch_size", "Jobs in the batch a job ran in", ["task"], registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32))
        self.download_bytes = Histogram("easel_download_bytes", "Sizes of downloaded attachments", registry=r,
                                        buckets=(1e4, 1e5, 5e5, 1e6, 5e6, 1e7, 2.5e7, 5e7))
        self.queue_length = Gauge("easel_queue_length", "Jobs waiting for a device", registry=r)
        self.jobs_running = Gauge("easel_jobs_running", "Jobs on a device now", registry=r)

    def watch(self, status: Callable[[], dict]) -> None:
        """Read queue gauges from the pool at scrape time."""
        self.queue_length.set_function(lambda: status()["queued"])
        self.jobs_running.set_function(lambda: status()["running"])
