"""Watching a Flink job on the cluster: when it has stalled, and how far it is.

The batch engine polls a job until it ends; `Watchdog` fails it after a bound
without a way forward (the cluster does not answer, no task manager, no free
slot, no progress), and `task_progress` turns the job's details into the
finished and total subtasks shown as the job's progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from personatag.engines.flink.jobs import FlinkJobFailed
from personatag.engines.flink.runtime.rest import FlinkRest, FlinkRestError, FlinkUnreachable
from personatag.metrics import default_metrics

log = logging.getLogger(__name__)


@dataclass
class Watchdog:
    """Decides when a job on the cluster has stalled: it fails the job after
    `bound` seconds without a way forward (no answer, no task manager, no free
    slot while waiting to start, no progress while running)."""

    rest: FlinkRest
    bound: float
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        # When each kind of trouble began; cleared only by that check passing,
        # so a failing cluster check and a stuck job never reset each other.
        self._cluster_since: float | None = None
        self._job_since: float | None = None
        self._progress: tuple[Any, ...] | None = None
        self.metrics = default_metrics()

    def _trouble(self, scope: str, reason: str, message: str) -> None:
        now = self.clock()
        if scope == "cluster":
            if self._cluster_since is None:
                self._cluster_since = now
            first = self._cluster_since
        else:
            if self._job_since is None:
                self._job_since = now
            first = self._job_since
        if now - first >= self.bound:
            self.metrics.flink_stalls.labels(reason=reason).inc()
            log.warning("flink stall (%s): %s", reason, message)
            raise FlinkJobFailed(f"{message} for {self.bound:g} s (stall watchdog)")

    def cluster(self, *, need_slot: bool) -> dict[str, Any] | None:
        """Check /overview; returns it when the cluster can take (or run) a job."""
        try:
            overview = self.rest.overview()
        except (FlinkUnreachable, FlinkRestError) as exc:
            self.metrics.flink_cluster_up.set(0)
            self._trouble("cluster", "unreachable", f"the Flink cluster does not answer ({exc})")
            return None
        self.metrics.flink_slots_available.set(overview.get("slots-available", 0))
        if not overview.get("taskmanagers"):
            self.metrics.flink_cluster_up.set(0)
            self._trouble(
                "cluster",
                "no_task_managers",
                f"the Flink cluster at {self.rest.base_url} has no task managers",
            )
            return None
        self.metrics.flink_cluster_up.set(1)
        if need_slot and not overview.get("slots-available"):
            self._trouble(
                "cluster",
                "no_slots",
                f"no free task slot on the Flink cluster ({overview.get('slots-total', 0)} "
                f"slots, {overview.get('jobs-running', 0)} jobs running)",
            )
            return None
        self._cluster_since = None
        return overview

    def job(self, info: dict[str, Any]) -> None:
        """Check a running job moves: its tasks get deployed and count records."""
        vertices = info.get("vertices", [])
        waiting = [v for v in vertices if v.get("status") in ("CREATED", "SCHEDULED", "DEPLOYING")]
        if info.get("state") in ("CREATED", "INITIALIZING") or (
            waiting and len(waiting) == len(vertices)
        ):
            self._progress = None
            self._trouble(
                "job", "no_slots", f"Flink job {info.get('jid')} got no task slots to start on"
            )
            return
        progress = tuple(
            (
                v.get("status"),
                *(
                    v.get("metrics", {}).get(k)
                    for k in ("read-bytes", "write-bytes", "read-records", "write-records")
                ),
                v.get("tasks", {}).get("FINISHED"),
            )
            for v in vertices
        )
        if progress != self._progress:
            self._progress = progress
            self._job_since = None
            return
        self._trouble("job", "no_progress", f"Flink job {info.get('jid')} shows no progress")


def task_progress(info: dict[str, Any]) -> tuple[int, int] | None:
    """(finished, all) subtasks of a Flink job, from its /jobs/:jid details;
    None while it lists none.

    Not records: Flink's vertex record counts are records passed between
    tasks, so a job chained into one task (read, filter, write) counts none,
    and the records left to read are not known to it.
    """
    finished = total = 0
    for vertex in info.get("vertices") or []:
        tasks = vertex.get("tasks") or {}
        parallelism = vertex.get("parallelism")
        total += parallelism if isinstance(parallelism, int) else sum(tasks.values())
        finished += int(tasks.get("FINISHED", 0))
    return (finished, total) if total else None
