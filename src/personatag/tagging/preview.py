"""Preview: whom a criterion catches now, without writing anything."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, and_, func, select

from personatag.config import Settings, load_settings
from personatag.criteria import JSON_VERSION, CriteriaError, compile_criterion, compile_sql
from personatag.definitions.personas import get_persona, persona_pks
from personatag.domain import Action, ExitPolicy, Mode, PinKind, check_as_of, utcnow
from personatag.errors import InputError
from personatag.memberships import rules
from personatag.store import Store
from personatag.store.matchset import is_heavy, materialize
from personatag.tagging.fallback import run_on

log = logging.getLogger(__name__)


def preview(
    store: Store,
    expr: str,
    *,
    persona: str | None = None,
    as_of: datetime | None = None,
    sample_size: int = 10,
    action: Action | str = Action.TAG,
    mode: Mode | str = Mode.ADHOC,
    exit_policy: ExitPolicy | str = ExitPolicy.KEEP,
    engine: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """{"count", "sample", "would_enter", "would_exit", "count_ignoring_case", "hint",
    "suggestion"} for `expr` at `as_of`, as `action` (in `mode`, with `exit_policy`)
    would apply it.

    `engine`: columnar (numpy over the columnar copy, caught up with every
    committed change first) or local (SQL in the store); None: the
    batch_engine setting of `settings` (a batch_engine that cannot preview,
    such as flink, previews on columnar). Both give the same answer.

    would_enter: matched contacts that do not hold the persona and are not pinned
    out (what a tag adds); None for an untag, which adds nobody. would_exit: who
    would leave. An untag removes matched members that are not pinned in; an
    ongoing tag with exit policy `remove` drops members that do not match and are
    not pinned in (as if the criterion alone defined the persona); None for any
    other tag, which removes nobody. Without a persona nobody holds it: everyone
    matched would enter, nobody would exit.

    count_ignoring_case, hint and suggestion: only when nothing matches and the
    criterion compares strings with `=` or `in`: how many would match with those
    compares ignoring case, a sentence saying so and (when some would) that
    criterion's text; otherwise None.
    """
    act, md, ex = Action(action), Mode(mode), ExitPolicy(exit_policy)
    can_enter = act is Action.TAG
    can_exit = act is Action.UNTAG or (md is Mode.ONGOING and ex is ExitPolicy.REMOVE)
    settings = settings if settings is not None else load_settings()
    on = _preview_engine(engine, settings)
    as_of = check_as_of(as_of or utcnow())
    if on == "columnar":

        def on_engine(name: str) -> dict[str, Any]:
            if name == "columnar":
                return _columnar(store, settings, expr, persona, as_of, sample_size, act, can_exit)
            return _local(store, expr, persona, as_of, sample_size, act, can_enter, can_exit)

        return run_on(on, on_engine, what="the preview").answer
    return _local(store, expr, persona, as_of, sample_size, act, can_enter, can_exit)


def _local(
    store: Store,
    expr: str,
    persona: str | None,
    as_of: datetime,
    sample_size: int,
    act: Action,
    can_enter: bool,
    can_exit: bool,
) -> dict[str, Any]:
    """The preview on the local engine: SQL in one read transaction."""
    with store.read(snapshot=True) as conn:
        catalog = store.catalog(conn)
        t = store.tables  # described after the catalog: every attribute it names
        c = t.contacts
        compiled = compile_criterion(expr, catalog)
        pks = persona_pks(conn, store)
        cond = compile_sql(
            compiled.ast,
            tables=t,
            catalog=catalog,
            persona_pks=pks,
            as_of=as_of,
            dialect=store.dialect,
        )

        held = None
        # Against a persona the match is used in four counts: evaluate it once
        # (an ilike folds every title in Python on SQLite: ~0.6 s per 1M a pass).
        if is_heavy(compiled.references) or persona is not None:
            held = materialize(conn, store, cond)
            cond = held.contains(c.c.pk)

        def count(where: Any) -> int:
            return int(conn.scalar(select(func.count()).select_from(c).where(where)) or 0)

        total = count(cond)
        sample = list(conn.scalars(select(c.c.id).where(cond).order_by(c.c.pk).limit(sample_size)))
        enter, leave = total, 0
        if persona is not None:
            p = get_persona(conn, store, persona).pk
            # The writers' rules (memberships.rules), counted instead of applied.
            members = rules.members(t, p)
            pinned = {kind: rules.pinned(t, p, kind) for kind in PinKind}
            # Driven by the member and pin sets, not by another scan of everyone.
            not_pinned_in = c.c.pk.not_in(pinned[PinKind.IN])
            staying_matched = count(and_(cond, c.c.pk.in_(members), not_pinned_in))
            if act is Action.UNTAG:
                leave = staying_matched
            else:
                held_and_matched = count(and_(cond, c.c.pk.in_(members)))
                blocked = count(and_(cond, c.c.pk.in_(pinned[PinKind.OUT])))
                enter = total - held_and_matched - blocked
                if can_exit:
                    leave = count(and_(c.c.pk.in_(members), not_pinned_in)) - staying_matched
        if held is not None:
            held.drop(conn)
        folded, suggestion = None, None
        if total == 0:
            folded, suggestion = _count_ignoring_case(conn, store, compiled.json, pks, as_of)
    return _answer(
        total,
        sample,
        enter if can_enter else None,
        leave if can_exit else None,
        folded,
        suggestion,
    )


def _answer(
    total: int,
    sample: list[str],
    enter: int | None,
    leave: int | None,
    folded: int | None,
    suggestion: str | None,
) -> dict[str, Any]:
    return {
        "count": total,
        "sample": sample,
        "would_enter": enter,
        "would_exit": leave,
        "count_ignoring_case": folded,
        "hint": (f"0 match; {folded:,} would match ignoring case — use ilike" if folded else None),
        "suggestion": suggestion if folded else None,
    }


PREVIEW_ENGINES = ("columnar", "local")


def _preview_engine(engine: str | None, settings: Settings) -> str:
    if engine is None:
        return settings.batch_engine if settings.batch_engine in PREVIEW_ENGINES else "columnar"
    if engine not in PREVIEW_ENGINES:
        raise InputError(f"previews run on the columnar or the local engine, not {engine!r}")
    return engine


# A preview whose reads a concurrent write fell between is taken again, this
# many times at most (then answered as read, and logged).
_CONSISTENT_TRIES = 5
_SAMPLE_CHUNK = 10_000


def _columnar(
    store: Store,
    settings: Settings,
    expr: str,
    persona: str | None,
    as_of: datetime,
    sample_size: int,
    act: Action,
    can_exit: bool,
) -> dict[str, Any]:
    """The preview on the columnar engine: the match as a mask over the copy's
    contact rows, counted against the persona's holders (bitmaps) and its pins
    (read from the store) by the writers' rules, as the SQL path counts them.

    The pins and the sample's ids are read in one transaction that also checks
    the copy and the persona sets are the store as it sees it: when a write
    came in between, the preview is taken again, so its counts are of one
    moment (as the SQL path's one transaction gives)."""
    from personatag.engines.columnar.batch import exact_in, matched_rows, row_mask, with_frame

    with store.read() as conn:
        catalog = store.catalog(conn)
        compiled = compile_criterion(expr, catalog)
        p = get_persona(conn, store, persona).pk if persona is not None else None

    def answer(frame: Any) -> tuple[dict[str, Any], bool]:
        mask = matched_rows(frame, compiled.ast, catalog, as_of)
        total = int(np.count_nonzero(mask))
        first = np.asarray(frame.pk)[np.flatnonzero(mask)[:sample_size]].tolist()
        enter, leave = total, 0
        members = None
        if persona is not None and frame.personas is not None:
            members = row_mask(frame, frame.personas(persona))
        c = store.tables.contacts
        with store.read(snapshot=True) as conn:
            # In chunks: a large --sample must not exceed a statement's bound
            # parameters (65,535 on PostgreSQL).
            sample = [
                cid
                for i in range(0, len(first), _SAMPLE_CHUNK)
                for cid in conn.scalars(
                    select(c.c.id).where(c.c.pk.in_(first[i : i + _SAMPLE_CHUNK])).order_by(c.c.pk)
                )
            ]
            pinned = {
                kind: np.sort(
                    np.fromiter(conn.scalars(rules.pinned(store.tables, p, kind)), np.int64)
                )
                for kind in PinKind
                if p is not None
            }
            exact = exact_in(frame, store, conn)
        if p is not None and members is not None:
            # The writers' rules (memberships.rules), counted on row masks.
            not_pinned_in = ~row_mask(frame, pinned[PinKind.IN])
            staying_matched = int(np.count_nonzero(mask & members & not_pinned_in))
            if act is Action.UNTAG:
                leave = staying_matched
            else:
                held_and_matched = int(np.count_nonzero(mask & members))
                blocked = int(np.count_nonzero(mask & row_mask(frame, pinned[PinKind.OUT])))
                enter = total - held_and_matched - blocked
                if can_exit:
                    leave = int(np.count_nonzero(members & not_pinned_in)) - staying_matched
        folded, suggestion = None, None
        if total == 0:
            again = _folded(compiled.json, catalog)
            if again is not None:
                folded = int(np.count_nonzero(matched_rows(frame, again.ast, catalog, as_of)))
                suggestion = again.text
        result = _answer(
            total,
            sample,
            enter if act is Action.TAG else None,
            leave if can_exit else None,
            folded,
            suggestion,
        )
        return result, exact

    for _attempt in range(_CONSISTENT_TRIES):
        result, exact = with_frame(store, settings, answer)
        if exact:
            return result
    log.info("preview: the store kept changing while it was read; answered as last read")
    return result


def _count_ignoring_case(
    conn: Connection, store: Store, document: dict[str, Any], pks: Any, as_of: datetime
) -> tuple[int | None, str | None]:
    """How many match once every string `=` / `in` ignores case (as `ilike` does),
    and that criterion's text; None, None when the criterion has no such compare or
    the folded form is refused."""
    catalog = store.catalog(conn)
    compiled = _folded(document, catalog)
    if compiled is None:
        return None, None
    cond = compile_sql(
        compiled.ast,
        tables=store.tables,
        catalog=catalog,
        persona_pks=pks,
        as_of=as_of,
        dialect=store.dialect,
    )
    c = store.tables.contacts
    return int(conn.scalar(select(func.count()).select_from(c).where(cond)) or 0), compiled.text


def _folded(document: dict[str, Any], catalog: Any) -> Any:
    """The criterion with every string `=` / `in` as `ilike`, compiled; None when
    it has no such compare or the folded form is refused."""
    folded, changed = _fold(document["expr"])
    if not changed:
        return None
    try:
        return compile_criterion({"version": JSON_VERSION, "expr": folded}, catalog)
    except CriteriaError:  # over a limit (e.g. a long `in` list as many ilikes)
        return None


def _literal(value: Any) -> bool:
    """A string `ilike` matches exactly up to case: no `%` or `_` wildcard in it."""
    return isinstance(value, str) and "%" not in value and "_" not in value


def _fold(node: Any) -> tuple[Any, bool]:
    """The JSON-form node with string `=` and `in` as `ilike`; whether any changed.
    (A value with `%` or `_` stays as it is: as a pattern it would match more.)"""
    if not isinstance(node, dict):
        return node, False
    op = node.get("op")
    if op == "=" and _literal(node.get("value")):
        return {"op": "ilike", "field": node["field"], "value": node["value"]}, True
    if op == "in" and any(_literal(v) for v in node["values"]):
        args = [
            {"op": "ilike", "field": node["field"], "value": v}
            if _literal(v)
            else {"op": "=", "field": node["field"], "value": v}
            for v in node["values"]
        ]
        return (args[0] if len(args) == 1 else {"op": "or", "args": args}), True
    out, changed = dict(node), False
    for key in ("arg", "where"):
        if key in node:
            out[key], hit = _fold(node[key])
            changed |= hit
    if "args" in node:
        folded = [_fold(a) for a in node["args"]]
        out["args"] = [f for f, _ in folded]
        changed |= any(hit for _, hit in folded)
    return out, changed
