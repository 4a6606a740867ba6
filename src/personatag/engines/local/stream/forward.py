"""A stream partition's metrics, gathered by the process that supervises it.

Each partition runs in a process of its own (partitioned.py), whose registry
nobody scrapes. Its processor records into `Forwarding`, which also keeps
what it recorded (counts summed, the latest of each gauge); the partition's
process sends that over a pipe every half second, and the supervisor replays
it on its own metrics (`Gathered`): the ones its `/metrics` shows, under the
names a single processor uses.

- Counts and latencies add up: evaluations, memberships entered and exited,
  errors (each partition's own contacts), and the latency of each change a
  partition applied (its contacts'; partition 0's also those of no contact),
  forwarded as counts per bucket.
- The feed rows processed, and their rate, are partition 0's: every
  partition reads every row, so a sum would count each row N times.
  Evaluations per second add up.
- The lag (rows and seconds) is the furthest-behind partition's, a partition
  that ended counting with the lag it last reported; re-checks
  scheduled and criteria active are the largest any partition reports (each
  reports the whole table's). Each partition's own lag is
  `personatag_stream_partition_lag_changes{partition}`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from personatag.metrics import Metrics

# (Metrics method, its keyword arguments)
Call = tuple[str, dict[str, Any]]

# Calls that set gauges: the latest of each partition is kept and combined.
_GAUGES = frozenset({"set_stream_lag", "set_stream_rates", "set_stream_criteria"})
# Counts: summed while they wait, added up by the supervisor (latencies as
# counts per bucket: add_stream_latencies).
_SUMMED = frozenset({"record_stream_changes", "record_memberships", "add_stream_latencies"})
# Replayed one by one.
_EACH = frozenset({"record_reconciliation"})


class Forwarding(Metrics):
    """The metrics of a partition's process: recorded as usual, and each stream
    call also kept until `drain` hands it over. What waits stays small however
    long the supervisor takes to read: the latest of each gauge, one sum of
    each count, the latencies' counts per bucket (reconciliations, rare, all)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._gauges: dict[str, dict[str, Any]] = {}
        self._sums: dict[str, dict[str, Any]] = {}
        self._each: list[Call] = []

    def _keep(self, name: str, **kwargs: Any) -> None:
        with self._lock:
            if name in _GAUGES:
                self._gauges[name] = kwargs
            elif name == "add_stream_latencies":
                got = self._sums.get(name)
                if got is None:
                    self._sums[name] = {"counts": list(kwargs["counts"]), "total": kwargs["total"]}
                else:
                    got["counts"] = [
                        a + b for a, b in zip(got["counts"], kwargs["counts"], strict=True)
                    ]
                    got["total"] += kwargs["total"]
            elif name in _SUMMED:
                got = self._sums.setdefault(name, dict.fromkeys(kwargs, 0))
                for key, value in kwargs.items():
                    got[key] = got.get(key, 0) + value
            else:
                self._each.append((name, kwargs))

    def drain(self) -> list[Call]:
        """What was kept since the last drain: counts, then each observation,
        then the gauges."""
        with self._lock:
            calls = [*self._sums.items(), *self._each, *self._gauges.items()]
            self._gauges, self._sums, self._each = {}, {}, []
        return calls

    def set_stream_lag(self, changes: int, seconds: float, rechecks: int) -> None:
        super().set_stream_lag(changes, seconds, rechecks)
        self._keep("set_stream_lag", changes=changes, seconds=seconds, rechecks=rechecks)

    def set_stream_rates(self, changes_per_s: float, evaluations_per_s: float) -> None:
        super().set_stream_rates(changes_per_s, evaluations_per_s)
        self._keep(
            "set_stream_rates", changes_per_s=changes_per_s, evaluations_per_s=evaluations_per_s
        )

    def set_stream_criteria(self, n: int) -> None:
        super().set_stream_criteria(n)
        self._keep("set_stream_criteria", n=n)

    def record_stream_changes(
        self,
        *,
        changes: int = 0,
        evaluations: int = 0,
        entered: int = 0,
        exited: int = 0,
        errors: int = 0,
    ) -> None:
        counts = dict(
            changes=changes, evaluations=evaluations, entered=entered, exited=exited, errors=errors
        )
        super().record_stream_changes(**counts)
        self._keep("record_stream_changes", **counts)

    def add_stream_latencies(self, counts: Sequence[int], total: float) -> None:
        # observe_stream_latencies counts them by bucket and calls this.
        super().add_stream_latencies(counts, total)
        self._keep("add_stream_latencies", counts=counts, total=total)

    def record_memberships(self, *, entered: int = 0, exited: int = 0) -> None:
        super().record_memberships(entered=entered, exited=exited)
        self._keep("record_memberships", entered=entered, exited=exited)

    def record_reconciliation(self, criterion: str, drift: int) -> None:
        super().record_reconciliation(criterion, drift)
        self._keep("record_reconciliation", criterion=criterion, drift=drift)


class Gathered:
    """The partitions' calls replayed on `metrics` (see the module doc)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # partition -> gauge call -> its latest arguments
        self._latest: dict[int, dict[str, dict[str, Any]]] = {}

    def replay(self, partition: int, calls: list[Call]) -> None:
        m = self.metrics
        for name, kwargs in calls:
            if name in _GAUGES:
                self._latest.setdefault(partition, {})[name] = kwargs
            elif name == "record_stream_changes":
                if partition != 0:  # every partition reads every feed row
                    kwargs = {**kwargs, "changes": 0}
                m.record_stream_changes(**kwargs)
            elif name in _SUMMED or name in _EACH:
                getattr(m, name)(**kwargs)
        self._combine()

    def forget(self, partition: int) -> None:
        """`partition`'s process ended: its rates and criteria no longer count;
        its lag does, as last reported, until it reports again (a partition
        that keeps dying is behind, not caught up)."""
        kept = self._latest.pop(partition, {}).get("set_stream_lag")
        if kept is not None:
            self._latest[partition] = {"set_stream_lag": kept}

    def _combine(self) -> None:
        m = self.metrics
        lags = {p: g["set_stream_lag"] for p, g in self._latest.items() if "set_stream_lag" in g}
        if lags:  # the stream's first: a reader of both sees it no sooner
            m.set_stream_lag(
                max(v["changes"] for v in lags.values()),
                max(v["seconds"] for v in lags.values()),
                max(v["rechecks"] for v in lags.values()),
            )
        for p, v in lags.items():
            m.set_stream_partition(p, lag=v["changes"])
        rates = [g["set_stream_rates"] for g in self._latest.values() if "set_stream_rates" in g]
        if rates:
            first = self._latest.get(0, {}).get("set_stream_rates")
            m.set_stream_rates(
                first["changes_per_s"] if first else 0.0,
                sum(v["evaluations_per_s"] for v in rates),
            )
        criteria = [
            g["set_stream_criteria"]["n"]
            for g in self._latest.values()
            if "set_stream_criteria" in g
        ]
        if criteria:
            m.set_stream_criteria(max(criteria))
