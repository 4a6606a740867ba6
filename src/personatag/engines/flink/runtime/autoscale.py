"""Task managers that follow the load: the local cluster's autoscaler.

With `PERSONATAG_FLINK_AUTOSCALE=true` the supervisor (supervisor.py) measures
the load every `interval_s` (`measure`) and asks `Autoscaler.decide` how many
task managers the cluster should have. The policy is the one the Flink
Kubernetes operator's autoscaler and EMR managed scaling apply, cut to what a
session cluster on one machine can see:

- **What is wanted** (`recommend`), the largest of three signals:
  - busy time: the slots' worth of busy time of the running jobs (Flink's
    `busyTimeMsPerSecond` of their tasks), averaged over the last
    `busy_window_s` (a job starting up is busy for a moment), each slot to be
    busy no more than the target utilisation: 3.6 busy slots, 2 slots a task
    manager and a 0.7 target want ceil(3.6 / (2 x 0.7)) = 3;
  - slots: the slots the running jobs hold (the flink stream's job may hold
    more than `parallelism`), and `parallelism` for every request queued for
    the flink engine;
  - the stream backlog: one task manager per `backlog_per_tm` changes
    waiting in the change feed.
  Clamped to [minimum, maximum]; an idle cluster wants the minimum.
- **Up at once, down late.** A larger size is taken at the next decision; a
  smaller one only once it has been enough for the whole `down_delay_s`
  (and then the largest size wanted in that time: a dip does not shrink it).
- **Stabilisation.** After a rescale nothing changes for `stabilisation_s`: new
  task managers need that long to register and the load to spread.
- **A budget.** At most `rescales_per_hour` rescales in any rolling hour.
- **Only idle task managers go** (every slot free). When none is idle the
  shrink waits; a running job never loses a slot to it.

Each decision says why in words; the supervisor writes the last ones to its
state file, where `personatag flink status`, the workbench's Flink page and
the metrics read them.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from personatag.engines.flink.runtime.rest import FlinkRest
from personatag.engines.local.stream.status import OFFSET_NAME
from personatag.errors import PersonatagError
from personatag.store import Store, changefeed, open_store

# Rescales the supervisor keeps in its state file (newest last).
KEEP_DECISIONS = 20
HOUR_S = 3600.0


@dataclass(frozen=True)
class ScalePolicy:
    """The autoscaler's bounds and windows (Settings.flink_autoscale_*)."""

    minimum: int = 1
    maximum: int = 4
    target_utilisation: float = 0.7
    interval_s: float = 10.0
    stabilisation_s: float = 60.0
    down_delay_s: float = 300.0
    rescales_per_hour: int = 12
    backlog_per_tm: int = 20_000
    busy_window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.minimum < 1 or self.maximum < self.minimum:
            raise ValueError(
                f"autoscale bounds must be 1 <= minimum <= maximum, got {self.minimum}.."
                f"{self.maximum}"
            )
        if not 0 < self.target_utilisation <= 1:
            raise ValueError(
                f"autoscale target utilisation must be in (0, 1], got {self.target_utilisation}"
            )


@dataclass(frozen=True)
class Load:
    """What the cluster has to do now (see `measure`)."""

    backlog: int = 0  # contact changes in the feed the stream has not processed
    queued: int = 0  # requests queued for the flink engine
    running: int = 0  # jobs running on the cluster
    running_slots: int = 0  # slots they hold (each job's largest task parallelism)
    busy: float | None = None  # slots' worth of busy time of the running jobs (None: unknown)
    slots_per_tm: int = 1
    parallelism: int = 1


@dataclass(frozen=True)
class Decision:
    """One look at the load: the size wanted, what was done and why."""

    at: float  # the policy's clock (the supervisor's: time.monotonic())
    current: int
    wanted: int
    target: int
    action: str  # up | down | hold | steady
    reason: str
    load: Load
    wall: float = field(default_factory=time.time)  # when, for people

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["load"] = asdict(self.load)
        out["at_utc"] = datetime.fromtimestamp(self.wall, UTC).isoformat()
        return out


def recommend(policy: ScalePolicy, load: Load, current: int) -> tuple[int, str]:
    """The number of task managers `load` calls for, and the signal that calls
    for it, in words (see the module doc)."""
    wants: list[tuple[int, str]] = []
    if load.busy is not None and load.busy > 0:
        per_tm = max(1, load.slots_per_tm) * policy.target_utilisation
        n = math.ceil(round(load.busy / per_tm, 6))
        wants.append(
            (
                n,
                f"{load.busy:.1f} slots' worth of busy time (each slot "
                f"{policy.target_utilisation:.0%} busy at most)",
            )
        )
    jobs = load.running + load.queued
    if jobs:
        held = load.running_slots or load.running * load.parallelism
        slots = held + load.queued * load.parallelism
        n = math.ceil(slots / max(1, load.slots_per_tm))
        wants.append(
            (
                n,
                f"{jobs} job{'' if jobs == 1 else 's'} ({load.running} running, {load.queued} "
                f"queued) need{'s' if jobs == 1 else ''} {slots} slot{'' if slots == 1 else 's'}",
            )
        )
    if load.backlog > 0:
        n = math.ceil(load.backlog / policy.backlog_per_tm)
        wants.append((n, f"{load.backlog:,} changes wait in the stream's backlog"))
    if not wants:
        return policy.minimum, "idle: no backlog, no queued or running job"
    n, why = max(wants, key=lambda w: w[0])
    if n > policy.maximum:
        return policy.maximum, f"{why} (capped at the maximum, {policy.maximum})"
    if n < policy.minimum:
        return policy.minimum, f"{why} (the minimum is {policy.minimum})"
    return n, why


@dataclass
class Autoscaler:
    """Turns successive loads into decisions (see the module doc); the clock is
    the caller's, so a test drives it with its own times."""

    policy: ScalePolicy
    # When the wanted size first fell below the current one (None: it has not).
    below_since: float | None = None
    # Sizes wanted since then (the largest is what a shrink goes to).
    recent: deque[tuple[float, int]] = field(default_factory=deque)
    rescales: deque[float] = field(default_factory=deque)  # times of rescales this hour
    busy: deque[tuple[float, float]] = field(default_factory=deque)  # (time, busy) in the window
    last_rescale: float | None = None
    last: Decision | None = None
    shrink_to: int | None = None  # a shrink's size, while it waits for idle task managers
    # The recent rescales (up or down), oldest first.
    history: deque[Decision] = field(default_factory=lambda: deque(maxlen=KEEP_DECISIONS))

    def decide(self, now: float, load: Load, current: int, idle: int) -> Decision:
        """The decision for `current` task managers, `idle` of them with every
        slot free. `target` is the size to have after this decision; its load
        has the busy time averaged over the window."""
        p = self.policy
        if load.busy is not None:
            self.busy.append((now, load.busy))
        while self.busy and now - self.busy[0][0] > p.busy_window_s:
            self.busy.popleft()
        if self.busy:
            load = replace(load, busy=sum(b for _, b in self.busy) / len(self.busy))
        wanted, why = recommend(p, load, current)
        while self.rescales and now - self.rescales[0] >= HOUR_S:
            self.rescales.popleft()
        self.shrink_to = None  # set again below while a shrink waits for idle ones
        if wanted < current:
            if self.below_since is None:
                self.below_since = now
                self.recent.clear()
            self.recent.append((now, wanted))
        else:
            self.below_since = None
            self.recent.clear()

        def hold(reason: str) -> Decision:
            return self._keep(Decision(now, current, wanted, current, "hold", reason, load))

        if wanted == current and p.minimum <= current <= p.maximum:
            return self._keep(Decision(now, current, wanted, current, "steady", why, load))
        last = self.last_rescale
        if last is not None and now - last < p.stabilisation_s:
            left = p.stabilisation_s - (now - last)
            return hold(f"{why}; wants {wanted}, settling after the last rescale ({left:.0f} s)")
        if len(self.rescales) >= p.rescales_per_hour:
            return hold(
                f"{why}; wants {wanted}, but the budget of {p.rescales_per_hour} rescales "
                "an hour is used"
            )
        if wanted > current:
            return self._rescale(Decision(now, current, wanted, wanted, "up", why, load))
        # Smaller: only after the delay, to the largest size wanted in it.
        since = self.below_since if self.below_since is not None else now
        if now - since < p.down_delay_s:
            left = p.down_delay_s - (now - since)
            return hold(f"{why}; {wanted} would do, shrinking in {left:.0f} s unless load returns")
        target = max(n for _, n in self.recent)
        if target >= current:
            return hold(why)
        can_go = min(current - target, idle)
        # What the shrink waits for, if it cannot go all the way: jobs that can
        # move (the flink stream's job) read it and give up their slots.
        self.shrink_to = target if can_go < current - target else None
        if can_go <= 0:
            return hold(f"{why}; wants {target}, but no task manager is idle (each runs tasks)")
        target = current - can_go
        self.below_since = now  # a further shrink waits the delay again
        self.recent.clear()
        return self._rescale(Decision(now, current, wanted, target, "down", why, load))

    def _rescale(self, d: Decision) -> Decision:
        self.last_rescale = d.at
        self.rescales.append(d.at)
        self.history.append(d)
        return self._keep(d)

    def _keep(self, d: Decision) -> Decision:
        self.last = d
        return d

    def state(self) -> dict[str, Any]:
        """What the supervisor's state file shows of the autoscaler."""
        last = self.last
        return {
            "enabled": True,
            "minimum": self.policy.minimum,
            "maximum": self.policy.maximum,
            "target_utilisation": self.policy.target_utilisation,
            "current": last.current if last else None,
            "target": last.target if last else None,
            "wanted": last.wanted if last else None,
            "reason": last.reason if last else "no decision yet",
            "shrink_to": self.shrink_to,
            "rescales_last_hour": len(self.rescales),
            "rescales_per_hour": self.policy.rescales_per_hour,
            "decisions": [d.to_json() for d in self.history],
            "last": last.to_json() if last else None,
        }


@dataclass(frozen=True)
class Look:
    """One measurement: the load, the resource ids of the registered task
    managers and of those with every slot free, and what could not be
    measured (None: everything was; a look with a problem decides nothing)."""

    load: Load
    registered: frozenset[str]
    idle: frozenset[str]
    problem: str | None = None


@dataclass
class Scaling:
    """What the supervisor needs to scale: the autoscaler, how it measures the
    load and asks again which task managers are idle (just before retiring
    them), and what it reports."""

    autoscaler: Autoscaler
    measure: Callable[[], Look]
    idle_now: Callable[[], frozenset[str]]
    problem: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def state(self, current: int, registered: int, retiring: int) -> dict[str, Any]:
        """The autoscaler's state with the task managers kept up (`current`),
        those of them registered with the cluster, and those being retired."""
        out = self.autoscaler.state()
        out["current"] = current
        out["registered"] = registered
        out["retiring"] = retiring
        out["problem"] = self.problem
        out["counts"] = dict(self.counts)
        return out


# The metric whose mean over a job's subtasks is the share of time they work.
BUSY_METRIC = "busyTimeMsPerSecond"
# Seconds a look waits to connect to the store (the supervisor must not hang).
STORE_TIMEOUT_S = 5.0


def _idle(tms: list[dict[str, Any]]) -> frozenset[str]:
    return frozenset(
        str(tm.get("id"))
        for tm in tms
        if tm.get("slotsNumber") and tm.get("freeSlots") == tm.get("slotsNumber")
    )


class LoadMeter:
    """Measures the load: running jobs, their busy time and the idle task
    managers from the cluster's REST API; queued flink requests and the
    stream's backlog from the store at `store_url` (None: neither counts).

    The store is opened at the first look that needs it, with a connect
    timeout. One that cannot be read (not created yet, a database that is
    down) makes the look's problem; a cluster that does not answer fails the
    look."""

    def __init__(
        self,
        rest: FlinkRest,
        store_url: str | None,
        *,
        parallelism: int,
        slots_per_tm: int,
        backlog: bool,
    ) -> None:
        self.rest = rest
        self.store_url = store_url
        self.store: Store | None = None
        self.parallelism = parallelism
        self.slots_per_tm = slots_per_tm
        self.backlog = backlog

    def __call__(self) -> Look:
        tms = self.rest.taskmanagers()
        running = [j for j in self.rest.jobs_overview() if j.get("state") == "RUNNING"]
        busy = 0.0
        slots = 0
        for job in running:
            b, n = self.job_load(str(job.get("jid")))
            busy += b
            slots += n
        problem = None
        try:
            queued, backlog = self.store_load()
        except (PersonatagError, SQLAlchemyError) as exc:
            queued = backlog = 0
            problem = f"the store could not be read: {str(exc).splitlines()[0]}"
        load = Load(
            backlog=backlog,
            queued=queued,
            running=len(running),
            running_slots=slots,
            busy=busy,
            slots_per_tm=self.slots_per_tm,
            parallelism=self.parallelism,
        )
        return Look(load, frozenset(str(t.get("id")) for t in tms), _idle(tms), problem)

    def idle_now(self) -> frozenset[str]:
        """The task managers with every slot free, asked again now."""
        return _idle(self.rest.taskmanagers())

    def job_load(self, jid: str) -> tuple[float, int]:
        """(slots' worth of busy time, slots held) of one running job. Per task:
        the mean busy share of its subtasks times their number; the busiest task
        counts, and the largest parallelism is the slots (a job's tasks share
        slots)."""
        worst = 0.0
        slots = 0
        for vertex in self.rest.job(jid).get("vertices") or []:
            parallelism = int(vertex.get("parallelism") or 1)
            slots = max(slots, parallelism)
            path = f"/jobs/{jid}/vertices/{vertex.get('id')}/subtasks/metrics?get={BUSY_METRIC}"
            for metric in self.rest.get(path) or []:
                avg = metric.get("avg") if isinstance(metric, dict) else None
                if isinstance(avg, int | float) and math.isfinite(avg):
                    share = min(1.0, max(0.0, avg / 1000.0))
                    worst = max(worst, share * parallelism)
        return worst, slots

    def store_load(self) -> tuple[int, int]:
        """(requests queued for the flink engine, changes the stream has yet to read)."""
        if self.store_url is None:
            return 0, 0
        if self.store is None:
            self.store = open_store(self.store_url, connect_timeout_s=STORE_TIMEOUT_S)
        store = self.store
        t = store.tables
        with store.read() as conn:
            queued = conn.scalar(
                select(func.count())
                .select_from(t.jobs)
                .where(t.jobs.c.status == "queued", t.jobs.c.engine == "flink")
            )
            behind = 0
            if self.backlog:
                o = t.stream_offsets
                read_to = conn.scalar(
                    select(func.min(o.c.seq)).where(
                        or_(o.c.name == OFFSET_NAME, o.c.name.like(f"{OFFSET_NAME}-%"))
                    )
                )
                if read_to is not None:
                    behind = changefeed.changes_after(conn, store, int(read_to))
        return int(queued or 0), behind


def stream_parallelism(
    base: int,
    slots_per_tm: int,
    state: dict[str, Any] | None,
    registered: int,
    backlog: int,
    backlog_per_tm: int,
) -> int:
    """The parallelism of the flink stream's job on a cluster that scales itself
    (`state`: the autoscaler's; None or not enabled: `base`): `base` slots (at
    most all of them) on as many task managers as its own backlog asks for
    (one per `backlog_per_tm` changes, at least one), no more than are
    registered (a job placed before new ones register would wait for their
    slots) and no more than a waiting shrink's size (`shrink_to`). Sized by its
    own load, not the cluster's: grown by other jobs, the cluster must not pull
    the stream's job onto every new task manager."""
    if not state or not state.get("enabled") or registered < 1:
        return base
    size = min(registered, max(1, math.ceil(backlog / max(1, backlog_per_tm))))
    shrink_to = state.get("shrink_to")
    if isinstance(shrink_to, int) and 0 < shrink_to < size:
        size = shrink_to
    return min(base, slots_per_tm) * size
