"""Partitions: the stream processor split by contact over N processes.

Contacts are hashed into N partitions (`contact pk % N`, the setting
`stream_partitions`). Partition p's processor evaluates only the changes and
due re-checks of its own contacts and keeps its own offset (`stream.p<p>of<N>`),
so N processes share the feed's work. Each commits its membership diffs, its
re-checks and its offset in one transaction, as a single processor does, so
every partition applies each change exactly once across crashes. On
PostgreSQL the partitions commit side by side; on SQLite their commits take
turns on the database's one write lock (evaluation, most of a step, still runs
in parallel).

What is not one contact's runs in partition 0 only: a new criterion's backfill
and swap, reconciliation and the pruning of unused grants. A swap catches the
new criterion up on every change any partition has applied and commits under
the stream's criteria lock, taken exclusive; each partition's commit takes it
shared and checks, under it, that the criteria it evaluated are still the
active ones (else the step is done again with the new ones). So no partition
commits a batch evaluated without a criterion swapped in before it.

Offsets: a processor evaluates against the store as it is, so a change applied
twice moves nothing the second time. When N changes, every offset of the new
layout starts at the least offset of the old one (`align`), under the stream's
own lease, which a single processor holds too: a single and a partitioned
processor never run on one store at once.

The processes themselves (the `Partitions` service that `personatag stream`
and `serve` run, one process per partition, started again when it dies) are
in partitioned.py; this module is what the processor and the status read.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, or_, select

from personatag.config import Settings
from personatag.errors import PersonatagError
from personatag.store import Store, changefeed

log = logging.getLogger(__name__)


def partition_name(base: str, p: int, n: int) -> str:
    """The offset (and lease) name of partition `p` of `n` of stream `base`."""
    return f"{base}.p{p}of{n}"


def names(base: str, n: int) -> list[str]:
    """The offset names of stream `base` split into `n` partitions (`base` when 1)."""
    return [base] if n == 1 else [partition_name(base, p, n) for p in range(n)]


def number(name: str) -> int:
    """The partition number in an offset name (0 for an unpartitioned one)."""
    head, _, tail = name.rpartition(".p")
    number, _, _ = tail.partition("of")
    return int(number) if head and number.isdigit() else 0


def family(conn: Connection, store: Store, base: str) -> dict[str, int]:
    """Every stored offset of stream `base`, whatever its partitions, by name."""
    so = store.tables.stream_offsets
    rows = conn.execute(
        select(so.c.name, so.c.seq).where(or_(so.c.name == base, so.c.name.like(f"{base}.p%of%")))
    ).all()
    return {str(name): int(seq) for name, seq in rows}


def layout(offsets: dict[str, int], base: str, n: int) -> dict[str, int]:
    """The offsets of `n` partitions of `base` among `offsets` (those stored)."""
    return {name: offsets[name] for name in names(base, n) if name in offsets}


def align(store: Store, base: str, n: int) -> dict[str, int]:
    """Give each of `n` partitions of stream `base` an offset: kept when this
    layout has them all, else the least of the layout found (a processor
    applies again, harmlessly, what a partition further on had applied).
    Offsets of other layouts are removed. The caller holds the stream's lease."""
    wanted = names(base, n)
    with store.write() as conn:
        found = family(conn, store, base)
        mine = layout(found, base, n)
        if len(mine) != len(wanted):
            start = min(found.values(), default=0)
            for name in wanted:
                changefeed.set_offset(conn, store, name, start)
            if found:
                log.info(
                    "stream offsets %s start at feed seq %d, the least of those before (%s)",
                    ", ".join(wanted),
                    start,
                    ", ".join(sorted(found)),
                )
        stale = [name for name in found if name not in wanted]
        if stale:
            so = store.tables.stream_offsets
            conn.execute(so.delete().where(so.c.name.in_(stale)))
        return layout(family(conn, store, base), base, n)


def least(conn: Connection, store: Store, base: str) -> int:
    """The offset up to which every partition of stream `base` has applied the feed."""
    return min(family(conn, store, base).values(), default=0)


def furthest(conn: Connection, store: Store, base: str) -> int:
    """The offset up to which some partition of stream `base` has applied the feed."""
    return max(family(conn, store, base).values(), default=0)


def check(settings: Settings, store: Store) -> int:
    """The partitions to run (the setting), or a clear error when they cannot run."""
    n = settings.stream_partitions
    if n > 1 and settings.stream_engine != "local":
        raise PersonatagError(
            f"stream_partitions is {n} but the stream engine is {settings.stream_engine!r}: "
            "partitions are the local engine's (the flink engine scales with flink_parallelism)"
        )
    if n > 1 and not store.shared:
        raise PersonatagError(
            "stream_partitions > 1 needs a store other processes can open "
            "(a SQLite file or PostgreSQL, not an in-memory database)"
        )
    return n
