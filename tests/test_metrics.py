"""Metrics: scrape the real HTTP server and parse what Prometheus would read."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from personatag import metrics as m
from personatag.errors import ConfigError
from personatag.metrics import (
    JOB_DURATION_BUCKETS,
    STREAM_LATENCY_BUCKETS,
    BatchHistogram,
    Metrics,
    RunningServer,
    bucket_counts,
    start_metrics_server,
    stop_metrics_server,
)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def served(metrics: Metrics) -> Iterator[RunningServer]:
    running = start_metrics_server(0, registry=metrics.registry)
    yield running
    stop_metrics_server(running.server)


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - our own server
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(port: int) -> tuple[dict[str, str], Samples]:
    """(family name -> type, (sample name, labels) -> value) from /metrics."""
    status, content_type, body = _get(port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        if family.name.endswith("_created"):  # counters' creation times, in the classic format
            continue
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return types, samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_every_metric_is_exported_with_its_type(served: RunningServer) -> None:
    types, samples = _scrape(served.port)
    assert types == {
        "personatag_requests": "counter",
        "personatag_job_duration_seconds": "histogram",
        "personatag_queue_depth": "gauge",
        "personatag_jobs_running": "gauge",
        "personatag_memberships_changed": "counter",
        "personatag_dispatcher_heartbeat_timestamp_seconds": "gauge",
        "personatag_dispatcher_last_scan_timestamp_seconds": "gauge",
        "personatag_dispatcher_scans": "counter",
        "personatag_request_files_claimed": "counter",
        "personatag_flink_stalls": "counter",
        "personatag_flink_cluster_up": "gauge",
        "personatag_flink_slots_available": "gauge",
        "personatag_stream_lag_changes": "gauge",
        "personatag_stream_lag_seconds": "gauge",
        "personatag_stream_changes": "counter",
        "personatag_stream_evaluations": "counter",
        "personatag_stream_memberships_changed": "counter",
        "personatag_stream_errors": "counter",
        "personatag_stream_latency_seconds": "histogram",
        "personatag_stream_rechecks_scheduled": "gauge",
        "personatag_stream_criteria_active": "gauge",
        "personatag_stream_changes_per_second": "gauge",
        "personatag_stream_evaluations_per_second": "gauge",
        "personatag_stream_partition_up": "gauge",
        "personatag_stream_partition_lag_changes": "gauge",
        "personatag_stream_partition_restarts": "counter",
        "personatag_reconciliation_drift": "gauge",
        "personatag_reconciliation_repairs": "counter",
        "personatag_webhook_deliveries": "counter",
        "personatag_webhook_lag_entries": "gauge",
    }
    # Known label values are there at 0 before anything happened.
    for status in ("succeeded", "partial", "failed", "cancelled", "duplicate"):
        assert _value(samples, "personatag_requests_total", status=status) == 0
    assert _value(samples, "personatag_memberships_changed_total", change="enter") == 0
    assert _value(samples, "personatag_memberships_changed_total", change="exit") == 0
    assert _value(samples, "personatag_dispatcher_scans_total") == 0
    for outcome in ("delivered", "failed", "dead_lettered"):
        assert _value(samples, "personatag_webhook_deliveries_total", outcome=outcome) == 0


def test_requests_by_status(metrics: Metrics, served: RunningServer) -> None:
    metrics.record_request("succeeded")
    metrics.record_request("succeeded")
    metrics.record_request("failed")
    metrics.record_request("rejected")  # not a known status: still counted
    _, samples = _scrape(served.port)
    assert _value(samples, "personatag_requests_total", status="succeeded") == 2
    assert _value(samples, "personatag_requests_total", status="failed") == 1
    assert _value(samples, "personatag_requests_total", status="partial") == 0
    assert _value(samples, "personatag_requests_total", status="rejected") == 1


def test_job_duration_histogram_and_memberships(metrics: Metrics, served: RunningServer) -> None:
    metrics.record_job("local", 0.004, tagged=10, untagged=0)
    metrics.record_job("local", 42.0, tagged=5, untagged=3)
    metrics.record_job("flink", 4000.0, tagged=0, untagged=7)
    metrics.record_job("local", 1.0, tagged=1000, untagged=1000, dry_run=True)
    _, samples = _scrape(served.port)

    def bucket(engine: str, le: str) -> float:
        return _value(samples, "personatag_job_duration_seconds_bucket", engine=engine, le=le)

    assert bucket("local", "0.01") == 1  # 4 ms
    assert bucket("local", "30.0") == 2  # + the dry run's 1 s
    assert bucket("local", "60.0") == 3  # + 42 s
    assert bucket("local", "+Inf") == 3
    assert bucket("flink", "3600.0") == 0  # over an hour: only +Inf
    assert bucket("flink", "+Inf") == 1
    assert _value(samples, "personatag_job_duration_seconds_count", engine="local") == 3
    assert _value(samples, "personatag_job_duration_seconds_sum", engine="local") == pytest.approx(
        43.004
    )
    buckets = sorted(
        float(dict(labels)["le"])
        for name, labels in samples
        if name == "personatag_job_duration_seconds_bucket" and dict(labels)["engine"] == "local"
    )
    assert buckets == [*JOB_DURATION_BUCKETS, float("inf")]
    assert buckets[0] == 0.01 and buckets[-2] == 3600.0
    # The dry run's projected changes are not memberships that changed.
    assert _value(samples, "personatag_memberships_changed_total", change="enter") == 15
    assert _value(samples, "personatag_memberships_changed_total", change="exit") == 10


def test_memberships_refuse_negative_counts(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        metrics.record_memberships(entered=-1)


def test_queue_scan_heartbeat_and_claims(metrics: Metrics, served: RunningServer) -> None:
    metrics.set_queue(7, 2)
    metrics.mark_scan(at=1_750_000_000.5)
    metrics.mark_scan(at=1_750_000_002.0)
    metrics.mark_heartbeat(at=1_750_000_003.0)
    metrics.mark_claimed()
    metrics.mark_claimed(4)
    _, samples = _scrape(served.port)
    assert _value(samples, "personatag_queue_depth") == 7
    assert _value(samples, "personatag_jobs_running") == 2
    assert _value(samples, "personatag_dispatcher_scans_total") == 2
    assert _value(samples, "personatag_dispatcher_last_scan_timestamp_seconds") == 1_750_000_002.0
    assert _value(samples, "personatag_dispatcher_heartbeat_timestamp_seconds") == 1_750_000_003.0
    assert _value(samples, "personatag_request_files_claimed_total") == 5

    metrics.set_queue(0, 0)
    _, samples = _scrape(served.port)
    assert _value(samples, "personatag_queue_depth") == 0
    assert _value(samples, "personatag_jobs_running") == 0


def test_timestamps_default_to_now(metrics: Metrics, served: RunningServer) -> None:
    import time

    before = time.time()
    metrics.mark_scan()
    metrics.mark_heartbeat()
    after = time.time()
    _, samples = _scrape(served.port)
    assert before <= _value(samples, "personatag_dispatcher_last_scan_timestamp_seconds") <= after
    assert before <= _value(samples, "personatag_dispatcher_heartbeat_timestamp_seconds") <= after


def test_healthz_404_and_head(served: RunningServer) -> None:
    assert _get(served.port, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    status, _, body = _get(served.port, "/nope")
    assert (status, body) == (404, "not found\n")
    assert _get(served.port, "/metrics/extra")[0] == 404
    assert _get(served.port, "/")[0] == 404
    status, _, body = _get(served.port, "/metrics", method="HEAD")
    assert (status, body) == (200, "")
    # A query string (as some scrapers send) still reaches /metrics.
    assert _get(served.port, "/metrics?name[]=personatag_queue_depth")[0] == 200


def test_each_registry_is_separate_from_the_global_one(served: RunningServer) -> None:
    from prometheus_client import REGISTRY

    other = Metrics()
    other.record_request("succeeded")
    _, samples = _scrape(served.port)
    assert _value(samples, "personatag_requests_total", status="succeeded") == 0
    assert REGISTRY.get_sample_value("personatag_requests_total", {"status": "succeeded"}) is None
    # The global registry's process metrics are not in ours.
    assert not any(name.startswith("process_") for name, _ in samples)


def test_process_wide_shorthands_and_default_server() -> None:
    """The module functions feed default_metrics(), which the server serves by default."""
    running = start_metrics_server(0)
    try:
        _, before = _scrape(running.port)
        m.record_request("partial")
        m.record_job("local", 0.2, tagged=3, untagged=1)
        m.record_memberships(entered=2)
        m.set_queue(3, 1)
        m.mark_scan(at=100.0)
        m.mark_heartbeat(at=101.0)
        m.mark_claimed()
        _, after = _scrape(running.port)
    finally:
        stop_metrics_server(running.server)

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after[key] - before.get(key, 0.0)  # a first job creates its engine's series

    assert grew("personatag_requests_total", status="partial") == 1
    assert grew("personatag_job_duration_seconds_count", engine="local") == 1
    assert grew("personatag_memberships_changed_total", change="enter") == 5
    assert grew("personatag_memberships_changed_total", change="exit") == 1
    assert grew("personatag_dispatcher_scans_total") == 1
    assert grew("personatag_request_files_claimed_total") == 1
    assert _value(after, "personatag_queue_depth") == 3
    assert _value(after, "personatag_jobs_running") == 1
    assert _value(after, "personatag_dispatcher_last_scan_timestamp_seconds") == 100.0
    assert _value(after, "personatag_dispatcher_heartbeat_timestamp_seconds") == 101.0


def test_render_is_what_a_web_route_returns(metrics: Metrics) -> None:
    metrics.mark_claimed(2)
    body, content_type = m.render(metrics.registry)
    assert content_type.startswith("text/plain; version=0.0.4")
    names = {
        s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
    }
    assert names["personatag_request_files_claimed_total"] == 2


def test_binds_loopback_and_reports_the_port_it_picked(served: RunningServer) -> None:
    host, port = served.server.server_address[:2]
    assert host == "127.0.0.1"
    assert port == served.port > 0
    assert served.thread.daemon and served.thread.is_alive()


def test_a_busy_port_fails_with_a_clear_error(served: RunningServer) -> None:
    with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{served.port}.*PERSONATAG_METRICS_PORT"):
        start_metrics_server(served.port)


def test_stop_closes_the_port_and_is_idempotent(metrics: Metrics) -> None:
    running = start_metrics_server(0, registry=metrics.registry)
    assert _get(running.port, "/healthz")[0] == 200
    stop_metrics_server(running.server)
    assert not running.thread.is_alive()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", running.port), timeout=2):
        pass
    stop_metrics_server(running.server)  # again: nothing to do, no hang


def test_the_batch_histogram_shows_what_a_histogram_shows() -> None:
    values = [-1.0, 0.0, 0.01, 0.010001, 0.2, 0.25, 1.0, 7.5, 59.9, 60.0, 61.0, 1e9]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("lat_seconds", "doc", STREAM_LATENCY_BUCKETS, ours)
    plain = Histogram("lat_seconds", "doc", buckets=STREAM_LATENCY_BUCKETS, registry=theirs)
    batch.add(*bucket_counts(STREAM_LATENCY_BUCKETS, values[:5]))
    batch.add(*bucket_counts(STREAM_LATENCY_BUCKETS, values[5:]))
    for v in values:
        plain.observe(max(v, 0.0))
    for le in [*(floatToGoString(b) for b in STREAM_LATENCY_BUCKETS), "+Inf"]:  # type: ignore[no-untyped-call]
        got = ours.get_sample_value("lat_seconds_bucket", {"le": le})
        assert got == theirs.get_sample_value("lat_seconds_bucket", {"le": le}), le
    for suffix in ("_count", "_sum"):
        assert ours.get_sample_value("lat_seconds" + suffix) == theirs.get_sample_value(
            "lat_seconds" + suffix
        )
    assert "# TYPE lat_seconds histogram" in generate_latest(ours).decode()
    with pytest.raises(ValueError, match="bucket counts"):
        batch.add([1, 2], 0.5)
