"""``/metrics``: Prometheus text through prometheus-client, read at scrape time.

The counters live in the observer and the stream as plain numbers; a
collector turns them into metrics when scraped, so nothing on the data path
calls prometheus-client. The one exception is the spec request latency
histogram, observed on the command thread (a lock and an add).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from eiger_server.observe.observer import DROP_CAUSES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# spec's commands; anything else is timed as "other" (labels stay few)
_COMMANDS = {"hello", "config", "exit", "clear", "goodbye", "run", "halt", "get_status", "set",
             "get", "read", "write", "xfer_done", "set_roi", "get_roi"}


class Metrics:
    """A registry of eiger_server's metrics. ``status()`` gives the /status dict."""

    def __init__(self, status: Callable[[], Dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._status = status
        self.request_latency = Histogram(
            "eiger_request_latency_seconds", "time to answer one spec request",
            ["command"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
        self.registry.register(_Collector(status))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, status: Callable[[], Dict[str, Any]]) -> None:
        self._status = status

    def describe(self) -> list:
        return []                          # metrics are known only when collected

    def collect(self) -> Iterator[Any]:
        s = self._status()
        c = s.get("counters", {})

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)
        yield counter("eiger_images_received", "images received from the DCU's stream",
                      s["received"])
        yield counter("eiger_images_decoded", "images decoded", s["decoded"])
        yield counter("eiger_images_saved", "images saved to files by the stream",
                      s["saved"])
        dropped = CounterMetricFamily("eiger_images_dropped", "images lost, by cause: "
                                      "lost in transit, unreadable, not saved, dropped by "
                                      "the DCU", labels=["cause"])
        for cause in DROP_CAUSES:
            dropped.add_metric([cause], c.get(cause, 0))
        if s.get("dcu_dropped") is not None:
            dropped.add_metric(["dcu"], s["dcu_dropped"])
        yield dropped
        ignored = CounterMetricFamily("eiger_images_ignored", "images received again "
                                      "(duplicate) or after their series (stale)",
                                      labels=["reason"])
        ignored.add_metric(["duplicate"], c.get("duplicates", 0))
        ignored.add_metric(["stale"], c.get("stale", 0))
        yield ignored
        yield counter("eiger_bytes_received", "bytes of image data received (compressed)",
                      s["bytes_received"])
        yield counter("eiger_files_written", "files written by the stream", s["files"])
        yield counter("eiger_file_bytes_written", "bytes of files written by the stream",
                      s["file_bytes"])
        yield gauge("eiger_queue_fill", "images waiting in the decode queue", c.get("queue", 0))
        yield gauge("eiger_queue_depth", "size of the decode queue (--queue-depth)",
                    c.get("queue_depth", 0))
        yield gauge("eiger_save_queue_fill", "save jobs waiting", c.get("save_queue", 0))
        yield gauge("eiger_frames_per_second", "images received per second (last 0.5 s)",
                    s["fps"])
        yield gauge("eiger_megabytes_per_second", "MB/s received (last 0.5 s)", s["mbps"])
        yield gauge("eiger_images_collected", "images collected by the current count",
                    s.get("images_collected") or 0)
        yield gauge("eiger_dcu_reachable", "1 when the DCU answered its last request",
                    1.0 if s.get("dcu_reachable") else 0.0)
        if s.get("free_disk_bytes") is not None:
            yield gauge("eiger_data_directory_free_bytes", "free space in data_directory",
                        s["free_disk_bytes"])
        pub = s.get("publish")
        if pub:
            yield counter("eiger_publish_sent", "messages sent on the PUB socket", pub["sent"])
            yield counter("eiger_publish_dropped", "messages dropped by the PUB socket "
                          "(a subscriber's queue full)", pub["dropped"])


class TimedHandler:
    """A command handler that times every request into ``histogram``."""

    def __init__(self, handler: Any, histogram: Histogram) -> None:
        self._handler = handler
        self._histogram = histogram

    def execute(self, req: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._handler.execute(req)
        finally:
            command = getattr(req, "command", "")
            self._histogram.labels(command if command in _COMMANDS else "other").observe(
                time.perf_counter() - start)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)
