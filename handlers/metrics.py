"""Prometheus metrics: request counts and latency, queue wait, OCR time, pool and cache state.

Event metrics (requests, queue wait, OCR time) are observed as they happen; state
(queue depth, workers, cache counters, worker RSS) is read from the pool and the cache
at scrape time, so those modules stay free of any metrics dependency.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from tornado import web

from cache import TTLLRUCache
from handlers.base import JsonHandler, method_label
from handlers.context import AppContext
from handlers.loop_lag import BUCKETS_S, LoopLagMonitor
from ocr_pool import Job

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _StateCollector(Collector):
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        pool, ocr = self.ctx.pool, self.ctx.ocr
        stats = pool.stats()
        yield _gauge("ocr_queue_depth", "Tasks waiting for a worker", pool.queue_depth)
        yield _gauge("ocr_tasks_in_flight", "Tasks running on a worker", pool.running_count())
        yield _gauge("ocr_workers_ready", "Workers with models loaded", pool.ready_count)
        yield _gauge("ocr_workers_busy", "Workers running a task", stats["busy"])
        yield _counter("ocr_tasks_run", "OCR tasks executed by workers", pool.tasks_run)
        yield _counter("ocr_tasks_cancelled", "Queued tasks dropped because no client waited", pool.tasks_cancelled)
        yield _counter("ocr_tasks_expired", "Queued tasks dropped unrun, out of time", pool.tasks_expired)
        restarts = CounterMetricFamily("ocr_worker_restarts", "Worker replacements by reason", labels=["reason"])
        for reason in ("recycled", "crashed", "timeout", "start_failed"):
            restarts.add_metric([reason], pool.restarts.get(reason, 0))
        yield restarts
        yield _counter("ocr_cache_hits", "Requests answered from the result cache", ocr.hits)
        yield _counter("ocr_cache_misses", "Requests not found in the result cache", ocr.misses)
        yield _counter("ocr_cache_evictions", "Results evicted by the LRU bound", ocr.results.cache.evictions)
        yield _counter("ocr_cache_shared", "Requests that joined an identical in-flight run", ocr.shared_waits)
        yield _gauge("ocr_cache_entries", "Results in the cache", len(ocr.results.cache))
        yield from _byte_budget_metrics(ocr.results.cache, "ocr_cache", "results in the cache")
        yield from _byte_budget_metrics(ocr.tasks.records, "ocr_task_records", "finished task records kept")
        yield _gauge("ocr_task_polls_waiting", "Task long polls (?wait=) waiting now", ocr.tasks.polls_waiting)
        budget = self.ctx.upload_budget
        yield _gauge("ocr_upload_buffered_bytes", "Request-body bytes held in memory now", budget.used)
        yield _counter(
            "ocr_uploads_refused", "Uploads answered 503 because max_buffered_bytes was in use", budget.refused
        )
        rss = GaugeMetricFamily("ocr_worker_rss_bytes", "Resident memory of each worker", labels=["pid"])
        for pid in pool.worker_pids():
            try:
                rss.add_metric([str(pid)], psutil.Process(pid).memory_info().rss)
            except psutil.Error:
                continue  # the worker exited between listing and reading
        yield rss
        yield from _loop_lag_metrics(self.ctx.loop_lag)
        if ocr.shared is not None:
            yield _gauge("ocr_shared_store_up", "1 when the shared Redis store is reachable", int(ocr.shared.connected))
            yield _counter("ocr_shared_store_errors", "Failed calls to the shared Redis store", ocr.shared.errors)


def _byte_budget_metrics(cache: TTLLRUCache[Any], prefix: str, what: str) -> Iterator[Metric]:
    yield _gauge(f"{prefix}_bytes", f"JSON bytes of the {what} (memory held is several times this)", cache.bytes)
    if cache.max_bytes is not None:
        yield _gauge(f"{prefix}_max_bytes", f"Budget for the JSON bytes of the {what}", cache.max_bytes)


def _loop_lag_metrics(monitor: LoopLagMonitor) -> Iterator[Metric]:
    yield _gauge(
        "ocr_event_loop_lag_max_seconds",
        "Largest lateness of the event loop's timer in the last minute: the longest any request waited for the loop",
        monitor.recent_max,
    )
    cumulative, buckets = 0, []
    for bound, count in zip((*map(str, BUCKETS_S), "+Inf"), monitor.bucket_counts):
        cumulative += count
        buckets.append((bound, cumulative))
    yield HistogramMetricFamily(
        "ocr_event_loop_lag_seconds",
        f"Lateness of a timer re-armed every {monitor.interval * 1000:g} ms on the event loop",
        buckets=buckets,
        sum_value=monitor.total,
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class ServiceMetrics:
    """All metrics of one server, in a registry of its own."""

    def __init__(self, ctx: AppContext) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ocr_http_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ocr_http_request_duration_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "ocr_queue_wait_seconds", "Time a task waited for a worker", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.ocr_time = Histogram(
            "ocr_task_duration_seconds",
            "Time a worker spent on a task",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(ctx))
        # labels() builds and looks up its key under a lock on every call; a hit is cheap
        # enough for that to show, so each label set's children (its request counter and its
        # endpoint's latency histogram) are looked up once.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._latency_children: dict[str, Any] = {}
        ctx.pool.on_task_finished = self.observe_task

    def observe_task(self, job: Job) -> None:
        if job.started is not None:
            self.queue_wait.observe(job.started - job.submitted)
            if job.finished is not None:
                self.ocr_time.observe(job.finished - job.started)

    def observe_request(
        self, handler: web.RequestHandler, duration: float | None = None, status: int | None = None
    ) -> None:
        """Count the request and observe its latency (`duration`, s; by default its
        request_time()) under `status` (by default the handler's)."""
        endpoint = getattr(handler, "endpoint", "other")
        status = handler.get_status() if status is None else status
        key = (endpoint, method_label(handler.request.method), status)
        children = self._request_children.get(key)
        if children is None:
            latency = self._latency_children.get(endpoint)
            if latency is None:
                latency = self._latency_children[endpoint] = self.latency.labels(endpoint)
            children = self._request_children[key] = (self.requests.labels(key[0], key[1], str(status)), latency)
        counter, latency = children
        counter.inc()
        latency.observe(handler.request.request_time() if duration is None else duration)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsHandler(JsonHandler):
    """Prometheus text on GET; errors (a 405 for POST) are JSON like every other endpoint's."""

    endpoint = "/metrics"
    metrics: ServiceMetrics

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.metrics.exposition())
