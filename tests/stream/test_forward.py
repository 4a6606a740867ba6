"""A stream partition's metrics as its supervisor shows them (forward.py):
what `Forwarding` keeps, replayed by `Gathered` on the supervisor's registry."""

from __future__ import annotations

from personatag.engines.local.stream.forward import Forwarding, Gathered
from personatag.metrics import STREAM_LATENCY_BUCKETS, Metrics

MANY = 1_000


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels or None)


def test_partitions_add_up_as_one_processor_would_show_them() -> None:
    parts = [Forwarding(), Forwarding()]
    for p, part in enumerate(parts):
        # Every partition reads all 10 feed rows; each evaluates its contacts.
        part.record_stream_changes(changes=10)
        part.record_stream_changes(evaluations=3 + p, entered=2, exited=p, errors=p)
        part.record_memberships(entered=2, exited=p)
        part.observe_stream_latency(0.2 + p)
        part.set_stream_rates(10.0, 3.0 + p)
        part.set_stream_lag(5 + 4 * p, 1.0 + p, 7)
        part.set_stream_criteria(12)
    part_0 = parts[0]
    assert value(part_0, "personatag_stream_changes_total") == 10  # its own registry too
    shown = Metrics()
    gathered = Gathered(shown)
    for p, part in enumerate(parts):
        calls = part.drain()
        assert calls and not part.drain()
        gathered.replay(p, calls)
    assert value(shown, "personatag_stream_changes_total") == 10  # partition 0's
    assert value(shown, "personatag_stream_evaluations_total") == 7
    assert value(shown, "personatag_stream_memberships_changed_total", change="enter") == 4
    assert value(shown, "personatag_stream_memberships_changed_total", change="exit") == 1
    assert value(shown, "personatag_memberships_changed_total", change="enter") == 4
    assert value(shown, "personatag_stream_errors_total") == 1
    assert value(shown, "personatag_stream_latency_seconds_count") == 2
    assert value(shown, "personatag_stream_changes_per_second") == 10.0
    assert value(shown, "personatag_stream_evaluations_per_second") == 7.0
    assert value(shown, "personatag_stream_lag_changes") == 9  # the furthest behind
    assert value(shown, "personatag_stream_lag_seconds") == 2.0
    assert value(shown, "personatag_stream_rechecks_scheduled") == 7  # the table's, not 14
    assert value(shown, "personatag_stream_criteria_active") == 12
    assert value(shown, "personatag_stream_partition_lag_changes", partition="0") == 5
    assert value(shown, "personatag_stream_partition_lag_changes", partition="1") == 9
    # A partition catching up moves the stream's lag to the other's.
    parts[1].set_stream_lag(0, 0.0, 7)
    gathered.replay(1, parts[1].drain())
    assert value(shown, "personatag_stream_lag_changes") == 5
    assert value(shown, "personatag_stream_partition_lag_changes", partition="1") == 0


def test_only_stream_calls_are_replayed() -> None:
    shown = Metrics()
    Gathered(shown).replay(0, [("set_queue", {"depth": 5, "running": 1})])
    assert value(shown, "personatag_queue_depth") in (None, 0.0)


def test_a_partition_that_ended_counts_with_its_last_lag() -> None:
    shown = Metrics()
    gathered = Gathered(shown)
    gathered.replay(0, [("set_stream_lag", {"changes": 0, "seconds": 0.0, "rechecks": 0})])
    gathered.replay(1, [("set_stream_lag", {"changes": 40, "seconds": 3.0, "rechecks": 0})])
    assert value(shown, "personatag_stream_lag_changes") == 40
    # Partition 1 died and is starting again: the stream is not caught up.
    gathered.forget(1)
    gathered.replay(0, [("set_stream_lag", {"changes": 0, "seconds": 0.0, "rechecks": 0})])
    assert value(shown, "personatag_stream_lag_changes") == 40
    assert value(shown, "personatag_stream_lag_seconds") == 3.0
    gathered.replay(1, [("set_stream_lag", {"changes": 2, "seconds": 0.1, "rechecks": 0})])
    assert value(shown, "personatag_stream_lag_changes") == 2


def test_reconciliations_are_not_dropped_with_latencies() -> None:
    part = Forwarding()
    for _ in range(2 * MANY):
        part.observe_stream_latency(0.01)
    part.record_reconciliation("c@1", 3)
    names = [name for name, _ in part.drain()]
    assert names.count("add_stream_latencies") == 1
    assert names.count("record_reconciliation") == 1


def test_what_waits_for_the_supervisor_stays_small() -> None:
    part = Forwarding()
    for i in range(5 * MANY):
        part.record_stream_changes(changes=1, evaluations=2)
        part.record_memberships(entered=1)
        part.observe_stream_latencies([0.01, 0.3, 100.0])
        part.set_stream_lag(i, 0.5, 3)
    calls = part.drain()
    assert len(calls) == 4
    by_name: dict[str, list[dict[str, object]]] = {}
    for name, kwargs in calls:
        by_name.setdefault(name, []).append(kwargs)
    assert by_name["record_stream_changes"] == [
        {
            "changes": 5 * MANY,
            "evaluations": 10 * MANY,
            "entered": 0,
            "exited": 0,
            "errors": 0,
        }
    ]
    assert by_name["record_memberships"] == [{"entered": 5 * MANY, "exited": 0}]
    assert by_name["set_stream_lag"] == [{"changes": 5 * MANY - 1, "seconds": 0.5, "rechecks": 3}]
    # Every latency, by bucket: 0.01 in the first, 0.3 in (0.25, 0.5], 100 above all.
    [latencies] = by_name["add_stream_latencies"]
    counts = [0] * (len(STREAM_LATENCY_BUCKETS) + 1)
    counts[0] = counts[STREAM_LATENCY_BUCKETS.index(0.5)] = counts[-1] = 5 * MANY
    assert latencies["counts"] == counts
    assert abs(float(latencies["total"]) - 5 * MANY * 100.31) < 1e-6 * 5 * MANY * 100
    shown = Metrics()
    Gathered(shown).replay(1, calls)
    assert value(shown, "personatag_stream_latency_seconds_count") == 15 * MANY
    assert value(shown, "personatag_stream_latency_seconds_bucket", le="0.25") == 5 * MANY
    assert value(shown, "personatag_stream_latency_seconds_bucket", le="0.5") == 10 * MANY
    assert value(shown, "personatag_stream_latency_seconds_bucket", le="+Inf") == 15 * MANY
