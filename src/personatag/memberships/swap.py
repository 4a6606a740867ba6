"""Swapping a backfilled version of an ongoing criterion in for the live one.

A new or edited ongoing criterion is evaluated set-based beside the stream
(its version is `building`), then installed here in one transaction: it takes
over the rows of the version it replaces (same persona: no exit and re-enter
for contacts both versions catch), or that version's rows are removed (another
persona), and it gets exactly the contacts it matches now.
"""

from __future__ import annotations

from collections.abc import Set
from datetime import datetime
from typing import Protocol

from sqlalchemy import Connection, select

from personatag.memberships.rows import Holders, Outcome, Writer
from personatag.store import Store


class Version(Protocol):
    """What a swap needs to know of a criterion version."""

    @property
    def pk(self) -> int: ...
    @property
    def persona_pk(self) -> int: ...
    @property
    def exit_remove(self) -> bool: ...
    @property
    def label(self) -> str: ...


def swap_in(
    conn: Connection,
    store: Store,
    new: Version,
    old: Version | None,
    matched: Set[int],
    *,
    at: datetime,
    bulk_threshold: int,
) -> Outcome:
    """Give `new` the memberships of the contacts in `matched` (what it matches
    now), replacing `old` (the version it supersedes, if any), inside the
    caller's write transaction. Takes the persona locks. Enters and exits are
    logged where the persona as a whole moves, with the swap as the reason."""
    store.lock_personas(conn, [new.persona_pk] + ([old.persona_pk] if old is not None else []))
    m = store.tables.membership_rows
    writer = Writer(store, at, bulk_threshold)
    if old is not None and old.pk != new.pk:
        if old.persona_pk == new.persona_pk:
            # Hand the old version's rows to the new one: no exit and re-enter
            # for people both versions catch. A row keeps its grant (its since);
            # its source names its criterion.
            conn.execute(
                m.update()
                .where(m.c.source == old.pk, m.c.persona_pk == old.persona_pk)
                .where(
                    ~m.c.contact_pk.in_(
                        select(m.c.contact_pk).where(
                            m.c.source == new.pk, m.c.persona_pk == new.persona_pk
                        )
                    )
                )
                .values(source=new.pk)
            )
            conn.execute(m.delete().where(m.c.source == old.pk))
        else:
            holders_old = Holders.load_persona(conn, store, old.persona_pk)
            members = [c for (_, c), s in holders_old.sources.items() if old.pk in s]
            writer.decide(holders_old, old.persona_pk, old.pk, True, members, ())
    holders = Holders.load_persona(conn, store, new.persona_pk)
    current = {c for (_, c), s in holders.sources.items() if new.pk in s}
    evaluated = current | matched
    writer.decide(holders, new.persona_pk, new.pk, new.exit_remove, evaluated, matched)
    return writer.flush(conn, reason=f"criterion {new.label} swapped in")
