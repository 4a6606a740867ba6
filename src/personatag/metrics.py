"""Prometheus metrics, and a small server for `/metrics` and `/healthz`.

Metrics live in their own `CollectorRegistry`, not prometheus_client's global
one, so nothing a library registers leaks into our scrape and tests can use a
fresh `Metrics()`. One process shares one registry (`default_metrics()`): the
dispatcher's server and the web app's `/metrics` route both render it with
`render()`. Nothing is created at import time.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from personatag.errors import ConfigError

log = logging.getLogger(__name__)

# What generate_latest() writes for our names (all legacy-valid): the classic
# text format, which every Prometheus version reads. prometheus_client's own
# CONTENT_TYPE_LATEST moved to version=1.0.0 in 0.22, which needs negotiation.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# From a 10 ms dry run to the 1 h default job deadline.
JOB_DURATION_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
)

# Exported at 0 from the start, so rate() and alerts see the series before the
# first request of that kind finishes. Other values are still accepted.
REQUEST_STATUSES = ("succeeded", "partial", "failed", "cancelled", "duplicate", "results_failed")
WEBHOOK_OUTCOMES = ("delivered", "failed", "dead_lettered")


STREAM_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def bucket_counts(bounds: Sequence[float], values: Iterable[float]) -> tuple[list[int], float]:
    """How many of `values` fall in each bucket of the ascending `bounds` (a
    value v in the first bucket whose bound is >= v; one more bucket after
    the last bound) and their sum, a negative value counted as 0."""
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for v in values:
        v = max(v, 0.0)
        counts[bisect.bisect_left(bounds, v)] += 1
        total += v
    return counts, total


class BatchHistogram:
    """A Prometheus histogram (no labels) that takes observations already
    counted by bucket (bucket_counts): the stream observes every change of
    a step, thousands at once, where a Histogram's observe costs ~2 us per
    value. Exposed as a Histogram is, without _created."""

    def __init__(
        self, name: str, documentation: str, bounds: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def add(self, counts: Sequence[int], total: float) -> None:
        if len(counts) != len(self._counts):
            raise ValueError(f"{self.name}: {len(counts)} bucket counts, not {len(self._counts)}")
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, seen = [], 0
        for bound, n in zip((*self.bounds, math.inf), counts, strict=True):
            seen += n
            # as prometheus_client writes a bound (a float's repr below 1e6)
            cumulative.append(("+Inf" if bound == math.inf else repr(float(bound)), seen))
        return [
            HistogramMetricFamily(
                self.name, self.documentation, buckets=cumulative, sum_value=total
            )
        ]


class Metrics:
    """Every personatag metric, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._autoscale: AutoscaleCollector | None = None
        self._autoscale_lock = threading.Lock()
        self.requests = Counter(
            "personatag_requests",
            "Request files finished, by outcome (a job status, duplicate or results_failed).",
            ["status"],
            registry=r,
        )
        self.job_duration = Histogram(
            "personatag_job_duration_seconds",
            "Wall time of a job from start to its result files, by engine.",
            ["engine"],
            buckets=JOB_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "personatag_queue_depth", "Jobs queued and waiting for a worker.", registry=r
        )
        self.jobs_running = Gauge("personatag_jobs_running", "Jobs running now.", registry=r)
        self.memberships_changed = Counter(
            "personatag_memberships_changed",
            "Memberships entered or exited (dry runs excluded).",
            ["change"],
            registry=r,
        )
        self.heartbeat = Gauge(
            "personatag_dispatcher_heartbeat_timestamp_seconds",
            "Unix time of the dispatcher's last heartbeat written to the store.",
            registry=r,
        )
        self.last_scan = Gauge(
            "personatag_dispatcher_last_scan_timestamp_seconds",
            "Unix time the dispatcher last finished listing the requests bucket.",
            registry=r,
        )
        self.scans = Counter(
            "personatag_dispatcher_scans", "Scans of the requests bucket.", registry=r
        )
        self.claimed = Counter(
            "personatag_request_files_claimed",
            "Request files claimed by this dispatcher (taken-over ones included).",
            registry=r,
        )
        self.flink_stalls = Counter(
            "personatag_flink_stalls",
            "Flink jobs failed by the stall watchdog, by reason (unreachable, "
            "no_task_managers, no_slots, no_progress).",
            ["reason"],
            registry=r,
        )
        self.flink_cluster_up = Gauge(
            "personatag_flink_cluster_up",
            "1 when the Flink cluster answered the last check and had task managers.",
            registry=r,
        )
        self.flink_slots_available = Gauge(
            "personatag_flink_slots_available",
            "Free task slots on the Flink cluster at the last check.",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "personatag_webhook_deliveries",
            "Webhook POSTs by outcome: delivered (2xx), failed (will be retried), "
            "dead_lettered (the batch was given up on).",
            ["outcome"],
            registry=r,
        )
        self.webhook_lag = Gauge(
            "personatag_webhook_lag_entries",
            "Membership-log seqs between the settled end of the log and the enabled "
            "webhook cursor furthest behind.",
            registry=r,
        )
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome=outcome)
        for reason in ("unreachable", "no_task_managers", "no_slots", "no_progress"):
            self.flink_stalls.labels(reason=reason)
        for status in REQUEST_STATUSES:
            self.requests.labels(status=status)
        for change in ("enter", "exit"):
            self.memberships_changed.labels(change=change)

        self._stream(r)

    def _stream(self, r: CollectorRegistry) -> None:
        """The stream processor's metrics (ongoing criteria)."""
        self.stream_lag_changes = Gauge(
            "personatag_stream_lag_changes",
            "Change-feed rows written but not yet processed by the stream.",
            registry=r,
        )
        self.stream_lag_seconds = Gauge(
            "personatag_stream_lag_seconds",
            "Age of the oldest change-feed row not yet processed (0 when caught up).",
            registry=r,
        )
        self.stream_changes = Counter(
            "personatag_stream_changes", "Change-feed rows processed.", registry=r
        )
        self.stream_evaluations = Counter(
            "personatag_stream_evaluations",
            "Evaluations of one ongoing criterion for one contact.",
            registry=r,
        )
        self.stream_memberships = Counter(
            "personatag_stream_memberships_changed",
            "Memberships entered or exited by ongoing criteria.",
            ["change"],
            registry=r,
        )
        self.stream_errors = Counter(
            "personatag_stream_errors",
            "Evaluations that failed (reported in stream_errors, the stream goes on).",
            registry=r,
        )
        self.stream_latency = BatchHistogram(
            "personatag_stream_latency_seconds",
            "From a change being written to its membership changes committing "
            "(every change a step consumes).",
            STREAM_LATENCY_BUCKETS,
            registry=r,
        )
        self.stream_rechecks = Gauge(
            "personatag_stream_rechecks_scheduled",
            "Time-window re-checks scheduled (criterion, contact pairs).",
            registry=r,
        )
        self.stream_rate_changes = Gauge(
            "personatag_stream_changes_per_second",
            "Change-feed rows processed per second over the last ten seconds.",
            registry=r,
        )
        self.stream_rate_evaluations = Gauge(
            "personatag_stream_evaluations_per_second",
            "Criterion evaluations per second over the last ten seconds.",
            registry=r,
        )
        self.stream_criteria = Gauge(
            "personatag_stream_criteria_active", "Ongoing criteria the stream keeps.", registry=r
        )
        # `stream --partitions N`: each partition's process, seen by its supervisor.
        self.stream_partition_up = Gauge(
            "personatag_stream_partition_up",
            "1 while a stream partition's process runs, 0 while it is down.",
            ["partition"],
            registry=r,
        )
        self.stream_partition_lag = Gauge(
            "personatag_stream_partition_lag_changes",
            "Change-feed rows a stream partition has not yet processed.",
            ["partition"],
            registry=r,
        )
        self.stream_partition_restarts = Counter(
            "personatag_stream_partition_restarts",
            "Times a stream partition's process was started again after it ended.",
            ["partition"],
            registry=r,
        )
        self.reconciliation_drift = Gauge(
            "personatag_reconciliation_drift",
            "Memberships the last reconciliation of a criterion found wrong (and repaired).",
            ["criterion"],
            registry=r,
        )
        self.reconciliation_drift_total = Counter(
            "personatag_reconciliation_repairs",
            "Memberships repaired by reconciliation, all criteria.",
            registry=r,
        )
        for change in ("enter", "exit"):
            self.stream_memberships.labels(change=change)

    def set_stream_lag(self, changes: int, seconds: float, rechecks: int) -> None:
        self.stream_lag_changes.set(max(changes, 0))
        self.stream_lag_seconds.set(max(seconds, 0.0))
        self.stream_rechecks.set(max(rechecks, 0))

    def set_stream_rates(self, changes_per_s: float, evaluations_per_s: float) -> None:
        self.stream_rate_changes.set(max(changes_per_s, 0.0))
        self.stream_rate_evaluations.set(max(evaluations_per_s, 0.0))

    def set_stream_criteria(self, n: int) -> None:
        self.stream_criteria.set(n)

    def set_stream_partition(
        self, partition: int, *, up: bool | None = None, lag: int | None = None
    ) -> None:
        """A stream partition's process is up or down, or its lag (feed rows)."""
        label = str(partition)
        if up is not None:
            self.stream_partition_up.labels(partition=label).set(1 if up else 0)
        if lag is not None:
            self.stream_partition_lag.labels(partition=label).set(max(lag, 0))

    def record_stream_partition_restart(self, partition: int) -> None:
        self.stream_partition_restarts.labels(partition=str(partition)).inc()

    def record_stream_changes(
        self,
        *,
        changes: int = 0,
        evaluations: int = 0,
        entered: int = 0,
        exited: int = 0,
        errors: int = 0,
    ) -> None:
        """What a stream step did (the membership totals are recorded separately)."""
        if changes:
            self.stream_changes.inc(changes)
        if evaluations:
            self.stream_evaluations.inc(evaluations)
        if entered:
            self.stream_memberships.labels(change="enter").inc(entered)
        if exited:
            self.stream_memberships.labels(change="exit").inc(exited)
        if errors:
            self.stream_errors.inc(errors)

    def observe_stream_latency(self, seconds: float) -> None:
        self.observe_stream_latencies([seconds])

    def observe_stream_latencies(self, seconds: Sequence[float]) -> None:
        """The latency of each change a step consumed."""
        self.add_stream_latencies(*bucket_counts(STREAM_LATENCY_BUCKETS, seconds))

    def add_stream_latencies(self, counts: Sequence[int], total: float) -> None:
        """Latencies already counted by bucket (bucket_counts), e.g. a
        partition's, forwarded to its supervisor."""
        self.stream_latency.add(counts, total)

    def record_reconciliation(self, criterion: str, drift: int) -> None:
        self.reconciliation_drift.labels(criterion=criterion).set(drift)
        if drift:
            self.reconciliation_drift_total.inc(drift)

    def record_request(self, status: str) -> None:
        """One request file finished with `status` (call once per file)."""
        self.requests.labels(status=status).inc()

    def record_job(
        self,
        engine: str,
        seconds: float,
        *,
        tagged: int = 0,
        untagged: int = 0,
        dry_run: bool = False,
    ) -> None:
        """A job ran for `seconds` on `engine`; a dry run changes no memberships."""
        self.job_duration.labels(engine=engine).observe(max(seconds, 0.0))
        if not dry_run:
            self.record_memberships(entered=tagged, exited=untagged)

    def record_memberships(self, *, entered: int = 0, exited: int = 0) -> None:
        """Memberships that were written (ad hoc jobs now, ongoing criteria later)."""
        if entered < 0 or exited < 0:
            raise ValueError(f"membership changes cannot be negative: {entered=}, {exited=}")
        if entered:
            self.memberships_changed.labels(change="enter").inc(entered)
        if exited:
            self.memberships_changed.labels(change="exit").inc(exited)

    def set_queue(self, depth: int, running: int) -> None:
        """Jobs waiting for a worker, and jobs running, right now."""
        self.queue_depth.set(depth)
        self.jobs_running.set(running)

    def mark_scan(self, at: float | None = None) -> None:
        """A listing of the requests bucket finished (at `at`, Unix seconds; default now)."""
        self.scans.inc()
        self.last_scan.set(time.time() if at is None else at)

    def mark_heartbeat(self, at: float | None = None) -> None:
        """The dispatcher is alive (at `at`, Unix seconds; default now)."""
        self.heartbeat.set(time.time() if at is None else at)

    def watch_autoscaler(self, read: Callable[[], dict[str, Any] | None]) -> None:
        """Export the local Flink cluster's autoscaler (see AutoscaleCollector),
        read with `read` from now on (registered once per registry)."""
        with self._autoscale_lock:  # two first scrapes at once register one collector
            if self._autoscale is None:
                self._autoscale = AutoscaleCollector(read)
                self.registry.register(self._autoscale)
            else:
                self._autoscale.read = read

    def mark_claimed(self, n: int = 1) -> None:
        """This dispatcher claimed `n` request files."""
        self.claimed.inc(n)

    def record_webhook_delivery(self, outcome: str) -> None:
        """One webhook POST ended with `outcome` (see WEBHOOK_OUTCOMES)."""
        self.webhook_deliveries.labels(outcome=outcome).inc()


AUTOSCALE_ACTIONS = ("up", "down", "hold", "steady")


class AutoscaleCollector:
    """The local Flink cluster's autoscaler, read when scraped: it runs in the
    cluster's supervisor, a process of its own, which keeps its state in a
    file; `read` returns that state (None or not enabled: nothing to show)."""

    def __init__(self, read: Callable[[], dict[str, Any] | None]) -> None:
        self.read = read

    def describe(self) -> list[Metric]:
        return []  # registering must not read the state file

    def collect(self) -> Iterator[Metric]:
        try:
            state = self.read() or {}
        except Exception:  # a scrape must not fail for it
            log.warning("the autoscaler's state could not be read", exc_info=True)
            return
        if not state.get("enabled"):
            return
        sizes = GaugeMetricFamily(
            "personatag_flink_autoscale_task_managers",
            "Task managers of the local Flink cluster as its autoscaler sees them: current, "
            "target (after its last decision), minimum, maximum.",
            labels=["size"],
        )
        for size in ("current", "target", "minimum", "maximum"):
            if isinstance(state.get(size), int):
                sizes.add_metric([size], state[size])
        yield sizes
        decisions = CounterMetricFamily(
            "personatag_flink_autoscale_decisions",
            "Autoscaler decisions since the cluster's supervisor started, by action "
            "(up, down: a rescale; hold: a size change waits; steady: the size fits).",
            labels=["action"],
        )
        counts = state.get("counts") or {}
        for action in AUTOSCALE_ACTIONS:
            decisions.add_metric([action], int(counts.get(action, 0)))
        yield decisions
        load = ((state.get("last") or {}).get("load")) or {}
        signals = GaugeMetricFamily(
            "personatag_flink_autoscale_load",
            "The load the autoscaler last measured: backlog (stream changes), queued "
            "(flink requests), running (jobs), running_slots (slots they hold), busy "
            "(slots' worth of busy time).",
            labels=["signal"],
        )
        for signal in ("backlog", "queued", "running", "running_slots", "busy"):
            if isinstance(load.get(signal), int | float):
                signals.add_metric([signal], float(load[signal]))
        yield signals


@functools.cache
def default_metrics() -> Metrics:
    """The process-wide metrics, created on first use."""
    return Metrics()


def render(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry` (default: the process's), and
    its Content-Type: what a `/metrics` route returns."""
    return generate_latest(registry or default_metrics().registry), CONTENT_TYPE


# Shorthands on the process-wide metrics, for code that has no Metrics passed in.


def record_request(status: str) -> None:
    default_metrics().record_request(status)


def record_job(
    engine: str, seconds: float, *, tagged: int = 0, untagged: int = 0, dry_run: bool = False
) -> None:
    default_metrics().record_job(engine, seconds, tagged=tagged, untagged=untagged, dry_run=dry_run)


def record_memberships(*, entered: int = 0, exited: int = 0) -> None:
    default_metrics().record_memberships(entered=entered, exited=exited)


def set_queue(depth: int, running: int) -> None:
    default_metrics().set_queue(depth, running)


def mark_scan(at: float | None = None) -> None:
    default_metrics().mark_scan(at)


def mark_heartbeat(at: float | None = None) -> None:
    default_metrics().mark_heartbeat(at)


def mark_claimed(n: int = 1) -> None:
    default_metrics().mark_claimed(n)


# -- the HTTP server ----------------------------------------------------------


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck scraper must not keep the process alive

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.registry = registry
        self.thread: threading.Thread | None = None


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                payload, content_type = render(self.server.registry)
            except Exception:  # a broken collector: say so, keep serving
                log.exception("rendering /metrics failed")
                payload, content_type, status = b"error\n", "text/plain; charset=utf-8", 500
            else:
                status = 200
        elif path == "/healthz":
            payload, content_type, status = b"ok\n", "text/plain; charset=utf-8", 200
        else:
            payload, content_type, status = b"not found\n", "text/plain; charset=utf-8", 404
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        # Every scrape would otherwise print a line on stderr.
        log.debug("metrics %s: " + format, self.address_string(), *args)


class RunningServer(NamedTuple):
    server: MetricsServer
    thread: threading.Thread
    port: int


def start_metrics_server(
    port: int = 0, host: str = "127.0.0.1", *, registry: CollectorRegistry | None = None
) -> RunningServer:
    """Serve `/metrics` and `/healthz` on host:port from a daemon thread.

    Port 0 picks a free port (see `.port`). Binds 127.0.0.1 unless told
    otherwise. Raises ConfigError when the address cannot be bound.
    """
    reg = registry if registry is not None else default_metrics().registry
    try:
        server = MetricsServer((host, port), reg)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose another "
            "port with PERSONATAG_METRICS_PORT (0 picks a free one) or PERSONATAG_METRICS_HOST"
        ) from exc
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name="metrics-server",
        daemon=True,
    )
    server.thread = thread
    thread.start()
    return RunningServer(server, thread, server.server_address[1])


def stop_metrics_server(server: MetricsServer, timeout: float = 5.0) -> None:
    """Stop serving, close the socket and wait for the server thread (idempotent)."""
    if server.thread is not None and server.thread.is_alive():
        server.shutdown()
        server.thread.join(timeout)
    server.server_close()
