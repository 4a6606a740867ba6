"""Stored criteria: named, versioned definitions (editing adds a version)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from personatag.criteria import compile_criterion
from personatag.definitions.personas import get_persona
from personatag.domain import PERSONA_KEY_RE, Action, ExitPolicy, Mode, utcnow
from personatag.errors import ConflictError, InputError, NotFoundError
from personatag.store.db import Store

STATUS_ACTIVE = "active"
# An ongoing version starts here; the stream backfills it and swaps it in.
STATUS_BUILDING = "building"
STATUS_PAUSED = "paused"
STATUS_RETIRED = "retired"

# (conn, store, criterion pk, persona pk, reason) -> contacts that left the persona
RemoveMemberships = Callable[[Connection, Store, int, int, str], int]


@dataclass(frozen=True)
class Criterion:
    pk: int
    name: str
    version: int
    persona_pk: int
    persona_key: str
    expr: str
    ast: dict[str, Any]
    action: Action
    mode: Mode
    exit_policy: ExitPolicy
    status: str
    created_at: datetime
    created_by: str | None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def _enum(kind: type[Any], value: str, option: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        valid = "|".join(v.value for v in kind)
        raise InputError(f"invalid {option} {value!r}: use {valid}") from None


def _select(store: Store) -> Any:
    t = store.tables
    return select(t.criteria, t.personas.c.key.label("persona_key")).join(
        t.personas, t.personas.c.pk == t.criteria.c.persona_pk
    )


def _row(row: Any) -> Criterion:
    m = row._mapping
    return Criterion(
        pk=m["pk"],
        name=m["name"],
        version=m["version"],
        persona_pk=m["persona_pk"],
        persona_key=m["persona_key"],
        expr=m["expr"],
        ast=json.loads(m["ast"]),
        action=Action(m["action"]),
        mode=Mode(m["mode"]),
        exit_policy=ExitPolicy(m["exit_policy"]),
        status=m["status"],
        created_at=m["created_at"],
        created_by=m["created_by"],
    )


def get_criterion(
    conn: Connection, store: Store, name: str, version: int | None = None
) -> Criterion:
    """The newest version of criterion `name` (or the given version)."""
    c = store.tables.criteria
    query = _select(store).where(c.c.name == name)
    if version is None:
        query = query.order_by(c.c.version.desc()).limit(1)
    else:
        query = query.where(c.c.version == version)
    row = conn.execute(query).first()
    if row is None:
        what = f"criterion {name!r}" + ("" if version is None else f" version {version}")
        raise NotFoundError(f"unknown {what}: see `personatag criterion list`")
    return _row(row)


def criterion_versions(conn: Connection, store: Store, name: str) -> list[Criterion]:
    c = store.tables.criteria
    rows = conn.execute(_select(store).where(c.c.name == name).order_by(c.c.version))
    found = [_row(r) for r in rows]
    if not found:
        raise NotFoundError(f"unknown criterion {name!r}: see `personatag criterion list`")
    return found


def list_criteria(conn: Connection, store: Store) -> list[Criterion]:
    """The newest version of every criterion, by name."""
    c = store.tables.criteria
    newest = select(c.c.name, func.max(c.c.version).label("v")).group_by(c.c.name).subquery()
    query = (
        _select(store)
        .join(newest, (newest.c.name == c.c.name) & (newest.c.v == c.c.version))
        .order_by(c.c.name)
    )
    return [_row(r) for r in conn.execute(query)]


def _insert_version(
    conn: Connection,
    store: Store,
    *,
    name: str,
    version: int,
    persona_key: str,
    expr: str,
    action: str,
    mode: str,
    exit_policy: str,
    actor: str | None,
) -> Criterion:
    act = _enum(Action, action, "--action")
    md = _enum(Mode, mode, "--mode")
    ex = _enum(ExitPolicy, exit_policy, "--exit")
    if md is Mode.ONGOING and act is not Action.TAG:
        raise InputError(
            "an ongoing criterion tags: use --action tag (an ongoing untag is an exit "
            "policy: --exit remove)"
        )
    persona = get_persona(conn, store, persona_key, active=True)
    compiled = compile_criterion(expr, store.catalog(conn))
    conn.execute(
        store.tables.criteria.insert().values(
            name=name,
            version=version,
            persona_pk=persona.pk,
            expr=compiled.text,
            ast=json.dumps(compiled.json, sort_keys=True),
            action=act.value,
            mode=md.value,
            exit_policy=ex.value,
            status=STATUS_BUILDING if md is Mode.ONGOING else STATUS_ACTIVE,
            created_at=utcnow(),
            created_by=actor,
        )
    )
    return get_criterion(conn, store, name, version)


def add_criterion(
    store: Store,
    name: str,
    *,
    persona: str,
    expr: str,
    action: str = "tag",
    mode: str = "adhoc",
    exit_policy: str = "keep",
    actor: str | None = None,
) -> Criterion:
    """Create criterion `name` at version 1 (the expression is checked first)."""
    if not PERSONA_KEY_RE.match(name):
        raise InputError(
            f"invalid criterion name {name!r}: use lower-case letters, digits, '-', '_' or '.'"
        )
    c = store.tables.criteria
    with store.write() as conn:
        if conn.scalar(select(c.c.pk).where(c.c.name == name).limit(1)) is not None:
            raise ConflictError(
                f"criterion {name!r} exists: `personatag criterion edit {name} ...` "
                "makes a new version"
            )
        return _insert_version(
            conn,
            store,
            name=name,
            version=1,
            persona_key=persona,
            expr=expr,
            action=action,
            mode=mode,
            exit_policy=exit_policy,
            actor=actor,
        )


def edit_criterion(
    store: Store,
    name: str,
    *,
    persona: str | None = None,
    expr: str | None = None,
    action: str | None = None,
    mode: str | None = None,
    exit_policy: str | None = None,
    actor: str | None = None,
) -> Criterion:
    """Add a new version of `name`; omitted parts are kept from the newest version."""
    with store.write() as conn:
        old = get_criterion(conn, store, name)
        return _insert_version(
            conn,
            store,
            name=name,
            version=old.version + 1,
            persona_key=persona or old.persona_key,
            expr=expr if expr is not None else old.expr,
            action=action or old.action.value,
            mode=mode or old.mode.value,
            exit_policy=exit_policy or old.exit_policy.value,
            actor=actor,
        )


def set_ongoing_status(
    store: Store,
    name: str,
    action: str,
    *,
    actor: str | None = None,
    source: str = "cli",
    remove_memberships: RemoveMemberships | None = None,
) -> Criterion:
    """Pause, resume or retire the live version of ongoing criterion `name`.

    pause: the stream stops evaluating it; its memberships stay as they are.
    resume: it is rebuilt (backfilled and swapped in) so it catches up.
    retire: `remove_memberships` removes each retired version's memberships in
    the same transaction, and the stream forgets it. Memberships are written
    only by personatag.memberships: callers use
    `personatag.memberships.retire.set_ongoing_status`, which passes it.
    """
    from personatag import audit_log

    c = store.tables.criteria
    wanted = {
        "pause": ([STATUS_ACTIVE, STATUS_BUILDING], STATUS_PAUSED),
        "resume": ([STATUS_PAUSED], STATUS_BUILDING),
        "retire": ([STATUS_ACTIVE, STATUS_BUILDING, STATUS_PAUSED], STATUS_RETIRED),
    }
    if action not in wanted:
        raise InputError(f"unknown action {action!r}: use pause, resume or retire")
    allowed, new_status = wanted[action]
    with store.write() as conn:
        versions = criterion_versions(conn, store, name)
        if versions[-1].mode is not Mode.ONGOING:
            raise InputError(f"criterion {name!r} is ad hoc: only ongoing criteria {action}")
        live = [v for v in versions if v.status in allowed]
        if not live:
            states = ", ".join(f"{v.label} {v.status}" for v in versions)
            raise ConflictError(f"criterion {name!r} has no version to {action} ({states})")
        target = live[-1]
        if action == "retire":
            if remove_memberships is None:
                raise ValueError("retiring a criterion needs its memberships' remover")
            # Versions may name different personas: take them all, in the one
            # global order, before removing any (see Store.lock_personas).
            store.lock_personas(conn, [v.persona_pk for v in live])
            for v in live:
                remove_memberships(conn, store, v.pk, v.persona_pk, f"criterion {v.label} retired")
                conn.execute(c.update().where(c.c.pk == v.pk).values(status=STATUS_RETIRED))
        else:
            conn.execute(c.update().where(c.c.pk == target.pk).values(status=new_status))
        audit_log.record(
            conn,
            store,
            actor=actor,
            action=f"criterion.{action}",
            target=target.label,
            source=source,
        )
        return get_criterion(conn, store, name, target.version)
