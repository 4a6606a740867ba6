"""The embedded stream processor under load: ongoing criteria over a large store.

    .venv/bin/python bench/stream.py [--mix harsh|realistic|reads]
        [--contacts 1000000] [--criteria 1000] [--rate 20000] [--seconds 20]
        [--preload 50000] [--reuse DIR] [--keep] [--working-set N]
        [--attribute-share 0.7] [--store sqlite|postgresql] [--json] [--profile FILE]
        [--partitions N]

Builds (or reuses) a generated store, adds `--criteria` ongoing criteria (a mix
of attribute, read-window, login-window and `within` criteria, each feeding its
own persona), then measures, in the same run:

1. catch-up: `--preload` changes are written first, then the processor is timed
   working through them (the most it can do: changes/s);
2. sustained: a separate writer process offers `--rate` changes/s for
   `--seconds` while the processor follows; reported: changes/s processed and
   the p50/p99 change-to-membership latency (from the change's commit to the
   commit of the membership changes it caused), and the lag left at the end;
3. write floor: the membership rows in and out and the log rows that the
   catch-up's changes caused (per change, as measured in step 1) are written
   again for 10,000 changes through the processor's writer, with no evaluation
   and no read-back, and timed to the commit (then undone); then again without
   the log rows. Nothing that keeps these rows in this store can apply this mix
   faster than that on this machine.

The anchor is the issue's goal: >= 20,000 changes/s with p99 < 1 s. The ratio
printed is achieved / goal. Setup shortcut (stated so in the output): criteria
are inserted active, without the backfill a real `criterion add` runs (on 1M
contacts a backfill is ~1 s of SQL per criterion); the first changes of each
contact therefore enter more memberships than a steady state would.

Mixes (--mix; the shares are of the changes written):

- `harsh` (the default): 70% attribute updates to uniformly random values of
  fields criteria read (and `interests`, which none reads), 30% reads of
  uniformly random publications;
- `reads`: 90% reads, 10% attribute updates, otherwise as `harsh`;
- `realistic`: 85% reads of publications drawn by popularity (Zipf, s = 1, over
  a fixed random ranking), 10% attribute updates whose new values are drawn
  from the field's current values (a sample of the store), half of them to
  fields no criterion reads, 5% logins. A login is two feed rows, as the
  importer and the API write it: the login and `last_login_at`.

--store postgresql runs the same on PostgreSQL ($PERSONATAG_TEST_PG_URL's
server, the tests' by default): a database made for the run and dropped after
it, or pt_bench_stream_<contacts>, kept, with --reuse.

--attribute-share sets the attribute share of `harsh` or `reads` (the rest are
reads). Rates and counts are feed rows (what the processor consumes).

--partitions N runs the processor as N partitions, a process each (as
`personatag stream --partitions N` does): each steps its share of the contacts
on an offset of its own; the catch-up ends when all have, the latency of a
change is that of the last partition to pass it.

--json prints one JSON object on stdout (the figures below, by key) and the
progress on stderr. --profile FILE profiles the catch-up's processor steps
(cProfile; the catch-up figure is then slower than it would be).

--working-set N measures a steady state instead: every criterion is first
evaluated for contacts 1..N through the processor (so they hold what they
should), and then only those contacts change. Each change then costs more, not
less: a contact holds ~50 memberships that every batch reads back, and a
change to an attribute moves as many memberships out as in.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import math
import multiprocessing as mp
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, or_, select

from adhoc import pg_database  # bench/adhoc.py: a database on the tests' server
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.domain import utcnow
from personatag.engines.local.stream import partitions
from personatag.engines.local.stream.processor import StreamProcessor
from personatag.generate.run import generate
from personatag.generate.vocab import FIRM_TYPES, REGIONS, SECTORS
from personatag.memberships.rows import Holders, Writer
from personatag.store import Store, changefeed, open_store
from personatag.store.rowwise import chunks

GOAL_RATE = 20_000
# 10,000 changes/s offered, p99 from the change's commit to the membership's.
GOAL_P99_S = 0.25
WORDS = ("invest", "treasur", "analyst", "portfolio", "credit", "strateg", "economist")
FIELDS = ("region", "seniority", "job_title", "firm_type", "interests")


def criteria_mix(n: int, rng: random.Random) -> list[str]:
    """A realistic mix: attributes, read windows (with and without attributes),
    login windows and `within`."""
    out = []
    for i in range(n):
        r = rng.choice(REGIONS)
        s = rng.choice(SECTORS)
        d = rng.choice((30, 90, 180))
        k = rng.randrange(1, 6)
        kind = i % 10
        if kind in (0, 1):
            out.append(f'region = "{r}" and seniority >= {rng.randrange(1, 9)}')
        elif kind == 2:
            f = rng.choice(FIRM_TYPES)[0]
            out.append(f'firm_type = "{f}" and (region = "{r}" or seniority >= 8)')
        elif kind == 3:
            out.append(f'job_title ilike "%{rng.choice(WORDS)}%" and region = "{r}"')
        elif kind in (4, 5, 6):
            out.append(f'count(read where sector = "{s}", {d} d) >= {k}')
        elif kind == 7:
            out.append(f'region = "{r}" and count(read where sector = "{s}", {d} d) >= {k}')
        elif kind == 8:
            out.append(f"count(login, {d} d) >= {k}")
        else:
            out.append(f"last_login_at within {d} d and seniority >= {rng.randrange(1, 9)}")
    return out


def setup(store: Store, n_criteria: int, rng: random.Random) -> None:
    from personatag.criteria import compile_criterion

    t = store.tables
    with store.read() as conn:
        if conn.scalar(select(func.count()).select_from(t.criteria)):
            return
    catalog = store.catalog()
    exprs = criteria_mix(n_criteria, rng)
    for i in range(n_criteria):
        add_persona(store, f"bench-{i:04d}", name=f"bench {i}", category="bench")
    with store.write() as conn:
        keys = dict(conn.execute(select(t.personas.c.key, t.personas.c.pk)).all())
        rows = []
        for i, expr in enumerate(exprs):
            c = compile_criterion(expr, catalog)
            rows.append(
                {
                    "name": f"bench-{i:04d}",
                    "version": 1,
                    "persona_pk": keys[f"bench-{i:04d}"],
                    "expr": c.text,
                    "ast": json.dumps(c.json, sort_keys=True),
                    "action": "tag",
                    "mode": "ongoing",
                    "exit_policy": "remove" if i % 2 else "keep",
                    "status": "active",
                    "created_at": utcnow(),
                    "created_by": "bench",
                }
            )
        conn.execute(t.criteria.insert(), rows)
        # Start the feed after the generated data: only the bench's changes count.
        changefeed.set_offset(conn, store, "stream", changefeed.head(conn, store))


def warm_up(url: str, proc: StreamProcessor, n: int) -> None:
    """Evaluate every criterion for contacts 1..n through the processor (one change
    per contact naming no fields, so every criterion is re-evaluated for it), so
    that later changes to those contacts only move the memberships they really
    change: a steady state for that working set. Window re-checks this schedules
    are left in place."""
    store = open_store(url)
    with store.write() as conn:
        changefeed.record_each(
            conn, store, changefeed.KIND_CONTACT, [(pk, None) for pk in range(1, n + 1)]
        )
    store.dispose()
    t0 = time.monotonic()
    entered = 0
    while True:
        r = proc.step()
        entered += r.entered
        if not r.changes:
            break
    print(
        f"warm-up: every criterion evaluated for {n:,} contacts in "
        f"{time.monotonic() - t0:.0f} s ({entered:,} memberships entered)",
        flush=True,
    )


@dataclass(frozen=True)
class Mix:
    """What the writer writes: shares of reads, attribute updates and logins."""

    name: str
    attribute_share: float
    login_share: float = 0.0
    # Reads pick publications by popularity (Zipf) rather than uniformly.
    zipf: bool = False
    # New attribute values are drawn from the field's current values (else
    # uniformly from a fixed vocabulary), and this share of the updates go to
    # fields no bench criterion reads.
    current_values: bool = False
    unread_share: float = 0.0


MIXES = {
    "harsh": Mix("harsh", attribute_share=0.7),
    "reads": Mix("reads", attribute_share=0.1),
    "realistic": Mix(
        "realistic",
        attribute_share=0.10,
        login_share=0.05,
        zipf=True,
        current_values=True,
        unread_share=0.5,
    ),
}
# Fields the bench's criteria read (criteria_mix), and fields none reads.
READ_FIELDS = ("region", "seniority", "job_title", "firm_type")
UNREAD_FIELDS = ("country", "firm", "interests", "last_name")
VALUE_SAMPLE = 5_000
ZIPF_S = 1.0


def uniform_value(field: str, rng: random.Random) -> object:
    return {
        "region": lambda: rng.choice(REGIONS),
        "seniority": lambda: rng.randrange(10),
        "job_title": lambda: rng.choice(("CIO", "Credit Analyst", "Treasurer", "Economist")),
        "firm_type": lambda: rng.choice(FIRM_TYPES)[0],
        "interests": lambda: [rng.choice(SECTORS)],
    }[field]()


def current_values(
    store: Store, fields: tuple[str, ...], top: int, rng: random.Random
) -> dict[str, list[object]]:
    """Each field's values on a random sample of contacts 1..top: drawing from
    them follows the field's current distribution (NULLs included)."""
    c = store.tables.contacts
    pks = sorted(rng.sample(range(1, top + 1), min(top, VALUE_SAMPLE)))
    out: dict[str, list[object]] = {f: [] for f in fields}
    with store.read() as conn:
        for part in chunks(pks):
            for row in conn.execute(select(*(c.c[f] for f in fields)).where(c.c.pk.in_(part))):
                for f, v in zip(fields, row, strict=True):
                    out[f].append(v)
    return out


def zipf_publications(pubs: int, rng: random.Random) -> tuple[list[int], list[float]]:
    """Publication pks in a fixed random order of popularity, with the cumulative
    Zipf weights of their ranks (for random.choices)."""
    order = list(range(1, pubs + 1))
    rng.shuffle(order)
    cum: list[float] = []
    total = 0.0
    for rank in range(1, pubs + 1):
        total += rank**-ZIPF_S
        cum.append(total)
    return order, cum


def write_changes(
    url: str,
    n: int,
    rate: float,
    seed: int,
    top: int | None = None,
    mix: Mix = MIXES["harsh"],
    batch: int = 500,
    ready: Any = None,
    elapsed: Any = None,
) -> None:
    """Write `n` feed rows of `mix` at `rate` per second, about `batch` per
    transaction, each change its own feed row, to contacts 1..top (all). Sets
    `ready` (an Event) once it starts writing and `elapsed` (a Value) to the
    seconds it took."""
    store = open_store(url)
    t = store.tables
    c = t.contacts
    rng = random.Random(seed)
    with store.read() as conn:
        top = min(int(conn.scalar(select(func.max(c.c.pk))) or 0), top or 10**12)
        pubs = int(conn.scalar(select(func.max(t.publications.c.pk))) or 0)
    fields = READ_FIELDS + UNREAD_FIELDS if mix.unread_share else FIELDS
    values = current_values(store, fields, top, rng) if mix.current_values else {}
    popular, cum = zipf_publications(pubs, rng) if mix.zipf else ([], [])
    if ready is not None:
        ready.set()
    started = time.monotonic()
    done = 0
    while done < n:
        now = utcnow()
        updates: dict[str, list[dict[str, object]]] = {}
        reads = []
        logins: dict[int, datetime] = {}
        k = 0
        while k < min(batch, n - done):
            pk = rng.randrange(1, top + 1)
            x = rng.random()
            if x < mix.attribute_share:
                if mix.unread_share:
                    pool = UNREAD_FIELDS if rng.random() < mix.unread_share else READ_FIELDS
                else:
                    pool = FIELDS
                field = rng.choice(pool)
                value = rng.choice(values[field]) if values else uniform_value(field, rng)
                updates.setdefault(field, []).append({"b_pk": pk, "b_v": value})
                k += 1
            elif x < mix.attribute_share + mix.login_share:
                if pk not in logins:  # a contact logs in once a batch
                    logins[pk] = now - timedelta(microseconds=rng.randrange(10**6))
                    k += 2  # the login and last_login_at
            else:
                pub = rng.choices(popular, cum_weights=cum)[0] if popular else None
                reads.append(
                    {
                        "contact_pk": pk,
                        "read_at": now - timedelta(microseconds=rng.randrange(10**6)),
                        "publication_pk": pub or rng.randrange(1, pubs + 1),
                    }
                )
                k += 1
        with store.write() as conn:
            for field, rows in updates.items():
                conn.execute(
                    c.update()
                    .where(c.c.pk == bindparam("b_pk"))
                    .values({field: bindparam("b_v", type_=c.c[field].type)}),
                    rows,
                )
                changefeed.record_each(
                    conn, store, changefeed.KIND_CONTACT, [(r["b_pk"], (field,)) for r in rows]
                )  # type: ignore[misc]
            if reads:
                conn.execute(insert_ignoring(store, t.reads), reads)
                changefeed.record_each(
                    conn,
                    store,
                    changefeed.KIND_READ,
                    [(r["contact_pk"], (f"pub:{r['publication_pk']}",)) for r in reads],
                )
            if logins:  # as the importer writes them (importer/loaders.py)
                at = bindparam("b_at", type_=c.c.last_login_at.type)
                conn.execute(
                    insert_ignoring(store, t.logins),
                    [{"contact_pk": pk, "login_at": when} for pk, when in logins.items()],
                )
                conn.execute(
                    c.update()
                    .where(c.c.pk == bindparam("b_pk"))
                    .where(or_(c.c.last_login_at.is_(None), c.c.last_login_at < at))
                    .values(last_login_at=at),
                    [{"b_pk": pk, "b_at": when} for pk, when in logins.items()],
                )
                changefeed.record_each(
                    conn, store, changefeed.KIND_LOGIN, [(pk, None) for pk in logins]
                )
                changefeed.record_each(
                    conn,
                    store,
                    changefeed.KIND_CONTACT,
                    [(pk, ("last_login_at",)) for pk in logins],
                )
        done += k
        ahead = done / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    if elapsed is not None:
        elapsed.value = time.monotonic() - started
    store.dispose()


def log_moves(store: Store, after_seq: int) -> tuple[int, int]:
    """(enters, exits) in the membership log after `after_seq`: a row counts
    one, a compact or bulk entry the contacts it names."""
    lg = store.tables.membership_log
    with store.read() as conn:
        rows = conn.execute(
            select(lg.c.change, func.sum(func.coalesce(lg.c.bulk_count, 1)))
            .where(lg.c.seq > after_seq)
            .group_by(lg.c.change)
        ).all()
    counts = {change: int(n) for change, n in rows}
    return counts.get("enter", 0), counts.get("exit", 0)


def log_head(store: Store) -> int:
    lg = store.tables.membership_log
    with store.read() as conn:
        return int(conn.scalar(select(func.max(lg.c.seq))) or 0)


def write_floor(
    store: Store,
    enters: float,
    exits: float,
    top: int,
    rng: random.Random,
    n: int = 10_000,
    *,
    logs: bool = True,
) -> tuple[float, int]:
    """(Seconds, changes): the time to write, through the processor's writer,
    what `n` changes of this mix move (`enters` and `exits` membership rows per
    change, each with its log row unless not `logs`: every bench persona has
    one criterion), timed to the commit, with no evaluation and no read-back;
    the rows are then put back as they were. A small store may have rows for
    fewer changes: the second value says how many."""
    t = store.tables
    m = t.memberships
    with store.read() as conn:
        crits = [
            (int(pk), int(ppk))
            for pk, ppk in conn.execute(
                select(t.criteria.c.pk, t.criteria.c.persona_pk).where(
                    t.criteria.c.mode == "ongoing"
                )
            )
        ]
        sample = sorted(rng.sample(range(1, top + 1), min(top, 2 * n)))
        held: list[Any] = []
        for part in chunks(sample):
            held += conn.execute(
                select(m.c.persona_pk, m.c.contact_pk, m.c.source, m.c.since).where(
                    m.c.source > 0, m.c.contact_pk.in_(part)
                )
            ).all()
    have = {(p, c, s) for p, c, s, _ in held}
    # New rows go to the sampled contacts only: their rows are all in `have`,
    # so none is already stored (a contact outside the sample may hold it).
    # A small store may not hold as many rows to add or remove as `n` changes
    # move: then fewer changes are written (the caller divides by what we say).
    free = len(sample) * len(crits) - len(have)
    if enters > 0:
        n = min(n, int(free / 2 / enters))  # half free: drawing stays quick
    if exits > 0:
        n = min(n, int(len(held) / exits))
    n = max(n, 1)
    gone = rng.sample(held, min(int(exits * n), len(held)))
    new: set[tuple[int, int, int]] = set()
    while len(new) < min(int(enters * n), free):
        crit, ppk = rng.choice(crits)
        key = (ppk, rng.choice(sample), crit)
        if key not in have:
            new.add(key)
    holders = Holders()
    for p, c, src, _ in gone:
        holders.sources.setdefault((p, c), set()).add(src)
    settings = Settings()
    # As the processor's: compact entries, indexed by contact, for many of one
    # persona through one criterion (PERSONATAG_STREAM_LOG_COMPACT).
    writer = Writer(
        store, utcnow(), settings.bulk_log_threshold, compact=settings.stream_log_compact
    )
    for ppk, cpk, crit in new:
        writer.decide(holders, ppk, crit, True, [cpk], {cpk})
    for ppk, cpk, crit, _ in gone:
        writer.decide(holders, ppk, crit, True, [cpk], ())
    if not logs:
        writer.logs.clear()
    mark = log_head(store)
    rows_before = count_rows(store)
    t0 = time.perf_counter()
    with store.write() as conn:
        writer.flush(conn)
    took = time.perf_counter() - t0
    with store.write() as conn:  # undo: the store is as it was
        if new:
            conn.execute(
                m.delete().where(
                    m.c.persona_pk == bindparam("p"),
                    m.c.contact_pk == bindparam("c"),
                    m.c.source == bindparam("s"),
                ),
                [{"p": p, "c": c, "s": s} for p, c, s in sorted(new)],
            )
        if gone:  # an empty list would insert one row of defaults
            conn.execute(
                m.insert(),
                [
                    {"persona_pk": p, "contact_pk": c, "source": s, "since": at, "criterion_pk": s}
                    for p, c, s, at in gone
                ],
            )
        conn.execute(t.membership_log.delete().where(t.membership_log.c.seq > mark))
        lm = t.membership_log_members
        conn.execute(lm.delete().where(lm.c.seq > mark))
    assert count_rows(store) == rows_before and log_head(store) == mark, "floor not undone"
    return took, n


def count_rows(store: Store) -> int:
    with store.read() as conn:
        return int(conn.scalar(select(func.count()).select_from(store.tables.memberships)) or 0)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_processor(proc: StreamProcessor, until: float, lat: list[float]) -> int:
    n = 0
    while time.monotonic() < until:
        r = proc.step()
        if r.changes:
            done = utcnow()
            n += r.changes
            lat.extend((done - at).total_seconds() for at in r.change_times)
        elif time.monotonic() >= until:
            break
        else:
            time.sleep(0.02)
    return n


def partition_worker(url: str, p: int, n: int, pipe: Any) -> None:
    """A partition's process for the bench: steps on the parent's word."""
    store = open_store(url)
    proc = StreamProcessor(store, Settings(stream_reconcile_s=0), partition=(p, n))
    proc.setup()  # as a running processor does (SQLite: checkpoints beside the writers)
    proc.criteria()
    pipe.send("ready")
    while True:
        cmd = pipe.recv()
        if cmd[0] == "catch_up":
            processed = evaluations = 0
            while True:
                r = proc.step()
                processed += r.changes
                evaluations += r.evaluations
                if not r.changes:
                    break
            pipe.send((processed, evaluations))
        elif cmd[0] == "follow":
            lat: list[float] = []
            done = run_processor(proc, time.monotonic() + cmd[1], lat)
            pipe.send((done, lat))
        else:
            break
    proc.teardown()
    store.dispose()


class Crew:
    """The processor the bench times: one in this process, or N partitions."""

    def __init__(self, url: str, store: Store, proc: StreamProcessor, n: int) -> None:
        self.proc, self.n, self.pipes, self.workers = proc, n, [], []
        if n == 1:
            proc.setup()  # as a running processor does (SQLite: checkpoints beside the writers)
            return
        partitions.align(store, "stream", n)
        ctx = mp.get_context("spawn")
        for p in range(n):
            mine, theirs = ctx.Pipe()
            w = ctx.Process(target=partition_worker, args=(url, p, n, theirs))
            w.start()
            self.pipes.append(mine)
            self.workers.append(w)
        for pipe in self.pipes:
            if pipe.recv() != "ready":
                raise SystemExit("a partition did not start")

    def catch_up(self, profiler: cProfile.Profile | None) -> tuple[int, int]:
        """(changes, evaluations) of a catch-up to the feed's head."""
        if self.n == 1:
            processed = evaluations = 0
            while True:
                if profiler is not None:
                    profiler.enable()
                r = self.proc.step()
                if profiler is not None:
                    profiler.disable()
                processed += r.changes
                evaluations += r.evaluations
                if not r.changes:
                    return processed, evaluations
        for pipe in self.pipes:
            pipe.send(("catch_up",))
        got = [pipe.recv() for pipe in self.pipes]
        # Every partition reads every change; the evaluations are each its own.
        return max(g[0] for g in got), sum(g[1] for g in got)

    def follow(self, seconds: float, lat: list[float]) -> int:
        """Follow the feed for `seconds`; the changes processed, latencies into `lat`."""
        if self.n == 1:
            return run_processor(self.proc, time.monotonic() + seconds, lat)
        for pipe in self.pipes:
            pipe.send(("follow", seconds))
        got = [pipe.recv() for pipe in self.pipes]
        # The partitions read the same changes in the same order: a change is
        # applied when the last of them has passed it.
        common = min(len(g[1]) for g in got)
        lat.extend(max(g[1][i] for g in got) for i in range(common))
        return min(g[0] for g in got)

    def close(self) -> None:
        if self.n == 1:
            self.proc.teardown()
        for pipe in self.pipes:
            pipe.send(("stop",))
        for w in self.workers:
            w.join(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mix", choices=sorted(MIXES), default="harsh", help="default harsh")
    ap.add_argument("--contacts", type=int, default=1_000_000)
    ap.add_argument("--criteria", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=GOAL_RATE)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument(
        "--preload",
        type=int,
        help="changes written before the catch-up (default 50,000, or a quarter of "
        "the contacts if that is less, at least 1,000)",
    )
    ap.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the store's database (default sqlite; postgresql: a database on "
        "$PERSONATAG_TEST_PG_URL's server, pt_bench_stream_<contacts> with --reuse)",
    )
    ap.add_argument(
        "--reuse",
        type=Path,
        help="keep the store here (SQLite) or in pt_bench_stream_<contacts> (PostgreSQL) "
        "and use it again next time",
    )
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--working-set",
        type=int,
        help="change only contacts 1..N, after evaluating every criterion for them "
        "(a steady state: memberships move only when a change really moves them)",
    )
    ap.add_argument(
        "--attribute-share",
        type=float,
        help="share of changes that are attribute updates, the rest reads "
        "(harsh and reads mixes; default 0.7 and 0.1)",
    )
    ap.add_argument(
        "--json", action="store_true", help="one JSON object on stdout; progress on stderr"
    )
    ap.add_argument(
        "--partitions", type=int, default=1, help="processes of the processor (default 1)"
    )
    ap.add_argument(
        "--profile",
        type=Path,
        help="profile the catch-up's processor steps (cProfile) into this file",
    )
    args = ap.parse_args()
    mix = MIXES[args.mix]
    if args.attribute_share is not None:
        if not 0 <= args.attribute_share <= 1:
            ap.error(f"--attribute-share must be between 0 and 1, got {args.attribute_share}")
        if args.mix == "realistic":
            ap.error("--attribute-share applies to the harsh and reads mixes, not realistic")
        mix = replace(mix, attribute_share=args.attribute_share)
    if args.preload is None:
        args.preload = min(50_000, max(1_000, args.contacts // 4))
    if args.profile and args.partitions > 1:
        ap.error("--profile profiles the processor in this process: use it without --partitions")
    for name in ("contacts", "criteria", "preload", "partitions"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if args.rate <= 0 or args.seconds <= 0:
        ap.error("--rate and --seconds must be more than 0")
    if args.json:
        # Everything else (ours and the library's) goes to stderr: stdout is the JSON.
        with contextlib.redirect_stdout(sys.stderr):
            result = run(args, mix)
        print(json.dumps(result, sort_keys=True))
    else:
        run(args, mix)
    sys.stdout.flush()


def finite(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else round(x, 3)


def insert_ignoring(store: Store, table: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING in the store's dialect (a repeated event)."""
    if store.backend.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    return insert(table).on_conflict_do_nothing()


def timed_writer(
    url: str, n: int, rate: float, seed: int, top: int | None, mix: Mix
) -> tuple[float, int]:
    """Run the writer in its own process until done: (seconds it wrote for, feed rows)."""
    ctx = mp.get_context("spawn")
    elapsed = ctx.Value("d", 0.0)
    proc = ctx.Process(
        target=write_changes, args=(url, n, rate, seed, top, mix, 500, None, elapsed)
    )
    store = open_store(url)
    with store.read() as conn:
        before = changefeed.head(conn, store)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"the change writer failed (exit code {proc.exitcode})")
    with store.read() as conn:
        rows = changefeed.head(conn, store) - before
    store.dispose()
    return float(elapsed.value), rows


def run(args: argparse.Namespace, mix: Mix) -> dict[str, Any]:
    root = args.reuse or Path(tempfile.mkdtemp(prefix="pt-bench-stream-"))
    root.mkdir(parents=True, exist_ok=True)
    pg_name = None
    if args.store == "postgresql":
        suffix = str(args.contacts) if args.reuse else f"{os.getpid()}_{int(time.time())}"
        pg_name = f"pt_bench_stream_{suffix}"
        url, created = pg_database(pg_name)
        store = open_store(url, create=True)
        with store.read() as conn:
            fresh = created or not conn.scalar(
                select(func.count()).select_from(store.tables.contacts)
            )
    else:
        url = f"sqlite:///{root / 'store.db'}"
        fresh = not (root / "store.db").exists()
        store = open_store(url, create=True)
    try:
        return measure(args, mix, root, url, store, fresh)
    finally:
        store.dispose()
        if not args.keep and not args.reuse:
            shutil.rmtree(root, ignore_errors=True)
            if pg_name is not None:
                pg_database(pg_name, drop=True)


def measure(
    args: argparse.Namespace, mix: Mix, root: Path, url: str, store: Store, fresh: bool
) -> dict[str, Any]:
    if fresh:
        where = root if args.store == "sqlite" else url.rsplit("/", 1)[-1]
        print(f"generating {args.contacts:,} contacts into {where} ...", flush=True)
        generate(store, contacts=args.contacts, seed=1)
    setup(store, args.criteria, random.Random(3))
    settings = Settings(stream_reconcile_s=0)
    proc = StreamProcessor(store, settings)
    with store.read() as conn:
        contacts = int(conn.scalar(select(func.count()).select_from(store.tables.contacts)) or 0)
        criteria = int(
            conn.scalar(
                select(func.count())
                .select_from(store.tables.criteria)
                .where(store.tables.criteria.c.mode == "ongoing")
            )
            or 0
        )
    top = args.working_set or contacts
    print(
        f"{criteria} ongoing criteria, {contacts:,} contacts, mix {mix.name} "
        f"({mix.attribute_share:.0%} attribute updates, {mix.login_share:.0%} logins) "
        + (
            f"(changes to the first {top:,}, each evaluated for every criterion first)"
            if args.working_set
            else "(criteria inserted active: no backfill)"
        ),
        flush=True,
    )
    if args.working_set:
        marker = root / f"warm-{args.working_set}-{args.criteria}"
        if marker.exists():  # a reused store keeps what the last warm-up entered
            print(f"warm-up: done for these {args.working_set:,} contacts by an earlier run")
        else:
            warm_up(url, proc, args.working_set)
            marker.touch()

    # 1. catch-up
    with store.read() as conn:
        start_seq = changefeed.head(conn, store)
    # Fresh changes on every run: a reused store replaying the same ones would
    # move (almost) no memberships.
    seed = start_seq
    timed_writer(url, args.preload, 1e9, seed, args.working_set, mix)
    mark = log_head(store)
    profiler = cProfile.Profile() if args.profile else None
    crew = Crew(url, store, proc, args.partitions)
    try:
        return timed(args, mix, crew, url, store, seed, top, mark, profiler, contacts, criteria)
    finally:
        crew.close()


def timed(
    args: argparse.Namespace,
    mix: Mix,
    crew: Crew,
    url: str,
    store: Store,
    seed: int,
    top: int,
    mark: int,
    profiler: cProfile.Profile | None,
    contacts: int,
    criteria: int,
) -> dict[str, Any]:
    t0 = time.monotonic()
    processed, evaluations = crew.catch_up(profiler)
    took = time.monotonic() - t0
    if profiler is not None:
        profiler.dump_stats(args.profile)
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
        print(f"catch-up profile (slower than unprofiled) written to {args.profile}")
    catch_rate = processed / took
    print(
        f"catch-up: {processed:,} changes in {took:.1f} s = {catch_rate:,.0f} changes/s "
        f"({evaluations / max(processed, 1):.0f} evaluations per change); "
        f"ratio to goal {catch_rate / GOAL_RATE:.3f}",
        flush=True,
    )
    enters, exits = (x / max(processed, 1) for x in log_moves(store, mark))
    print(f"  membership moves per change: {enters:.2f} in, {exits:.2f} out (each logged)")
    with store.read() as conn:
        assert partitions.least(conn, store, "stream") == changefeed.head(conn, store)

    # 2. sustained: the clock starts when the writer does (not at its spawn);
    # about 20 commits a second, so changes arrive spread out, not in bursts.
    n = max(1, int(args.rate * args.seconds))
    batch = max(1, min(500, round(args.rate / 20)))
    ctx = mp.get_context("spawn")
    ready, elapsed = ctx.Event(), ctx.Value("d", 0.0)
    writer = ctx.Process(
        target=write_changes,
        args=(url, n, args.rate, seed + 1, args.working_set, mix, batch, ready, elapsed),
    )
    with store.read() as conn:
        before = changefeed.head(conn, store)
    lat: list[float] = []
    writer.start()
    while not ready.wait(0.1):
        if not writer.is_alive():
            raise SystemExit(f"the change writer failed (exit code {writer.exitcode})")
    t0 = time.monotonic()
    done = crew.follow(args.seconds, lat)
    took = time.monotonic() - t0
    writer.join()
    if writer.exitcode != 0:
        raise SystemExit(f"the change writer failed (exit code {writer.exitcode})")
    with store.read() as conn:
        head = changefeed.head(conn, store)
        left = head - partitions.least(conn, store, "stream")
    offered = (head - before) / max(float(elapsed.value), args.seconds, 1e-9)
    rate = done / took
    p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
    print(
        f"sustained at an offered {offered:,.0f}/s (asked {args.rate:,.0f}/s) for "
        f"{args.seconds:.0f} s: processed {rate:,.0f} changes/s (ratio to goal "
        f"{rate / GOAL_RATE:.3f}); latency p50 {p50 * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms "
        f"(goal < {GOAL_P99_S * 1000:.0f} ms, ratio {p99 / GOAL_P99_S:.2f}); {left:,} changes "
        "left unprocessed",
        flush=True,
    )

    # 3. write floor
    took, floor_n = write_floor(store, enters, exits, top, random.Random(4), 10_000)
    floor = floor_n / took
    print(
        f"write floor: the membership and log rows of {floor_n:,} changes of this mix "
        f"written in {took:.2f} s (no evaluation, no read-back) = at most {floor:,.0f} "
        f"changes/s on this store; ratio to goal {floor / GOAL_RATE:.3f}"
    )
    rows_only, rows_n = write_floor(store, enters, exits, top, random.Random(5), 10_000, logs=False)
    print(
        f"  of which the membership rows alone: {rows_only:.2f} s = at most "
        f"{rows_n / rows_only:,.0f} changes/s even with no log rows; ratio to goal "
        f"{rows_n / rows_only / GOAL_RATE:.3f}",
        flush=True,
    )
    return {
        "mix": mix.name,
        "store": args.store,
        "attribute_share": mix.attribute_share,
        "login_share": mix.login_share,
        "contacts": contacts,
        "criteria": criteria,
        "partitions": args.partitions,
        "working_set": args.working_set,
        "backlog_changes": processed,
        "backlog_changes_per_s": finite(catch_rate),
        "evaluations_per_change": finite(evaluations / max(processed, 1)),
        "enters_per_change": finite(enters),
        "exits_per_change": finite(exits),
        "rate": args.rate,
        "seconds": args.seconds,
        "offered_per_s": finite(offered),
        "sustained_processed_per_s": finite(rate),
        "sustained_p50_ms": finite(p50 * 1000),
        "sustained_p99_ms": finite(p99 * 1000),
        "sustained_left": left,
        "write_floor_changes_per_s": finite(floor),
        "write_floor_rows_only_changes_per_s": finite(rows_n / rows_only),
        "goal_changes_per_s": GOAL_RATE,
        "goal_p99_ms": GOAL_P99_S * 1000,
    }


if __name__ == "__main__":
    main()
