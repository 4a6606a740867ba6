"""Data versions: a counter per table, bumped in the transaction of every bulk write.

Engines that evaluate criteria over a copy of the store (Flink's snapshots)
reuse the copy while the versions it was made from are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select, update

from personatag.store.schema import Tables


def bump(conn: Connection, tables: Tables, names: Iterable[str]) -> None:
    """Count one more change to each table in `names` (inside the writer's transaction)."""
    dv = tables.data_versions
    for name in sorted(set(names)):
        changed = conn.execute(
            update(dv).where(dv.c.name == name).values(version=dv.c.version + 1)
        ).rowcount
        if not changed:
            conn.execute(dv.insert().values(name=name, version=1))


def current(conn: Connection, tables: Tables, names: Iterable[str]) -> dict[str, int]:
    """The versions of `names` (0 for a table never bulk-written)."""
    wanted = sorted(set(names))
    dv = tables.data_versions
    found = dict(conn.execute(select(dv.c.name, dv.c.version).where(dv.c.name.in_(wanted))).all())
    return {name: int(found.get(name, 0)) for name in wanted}
