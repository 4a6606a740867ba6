"""A criterion's versions side by side, and where an ongoing version is on its way in.

- `text_diff`: two criterion texts token by token (a quoted string is one token).
- `membership_diff`: whom each side catches now, who one catches and the other
  does not (counts and samples), and what the newer side would move, as the
  preview counts it: `would_enter` only where the action adds people,
  `would_exit` only where it can remove anyone (an untag, or an ongoing
  criterion with exit policy `remove`), else None.
- `history` and `progress`: each version's lifecycle from the audit log (added,
  paused, backfill started, swapped in, ...), and the state of the newest one.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from personatag.criteria import compile_criterion, compile_sql
from personatag.definitions.criteria import STATUS_BUILDING, Criterion, criterion_versions
from personatag.definitions.personas import persona_pks
from personatag.domain import utcnow
from personatag.store import Store
from personatag.store.matchset import TempPks
from personatag.tagging.preview import preview
from personatag.times import iso

# A quoted string, a run of spaces, a word, or one other character.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|\'(?:[^\'\\]|\\.)*\'?|\s+|\w+|[^\w\s]', re.UNICODE)

# The state of a version the stream has started evaluating but not swapped in.
BACKFILLING = "backfilling"
BACKFILL_EVENT = "criterion.backfill"
SWAP_EVENT = "criterion.swap"


def text_diff(old: str, new: str) -> list[dict[str, str]]:
    """[{"op": "same"|"del"|"add", "text"}] turning `old` into `new`, token by token;
    joining the "same" and "add" parts gives `new`, "same" and "del" gives `old`."""
    a, b = _TOKEN.findall(old), _TOKEN.findall(new)
    out: list[dict[str, str]] = []

    def put(op: str, tokens: list[str]) -> None:
        text = "".join(tokens)
        if not text:
            return
        if out and out[-1]["op"] == op:
            out[-1]["text"] += text
        else:
            out.append({"op": op, "text": text})

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            put("same", a[i1:i2])
        else:
            put("del", a[i1:i2])
            put("add", b[j1:j2])
    return out


@dataclass(frozen=True)
class Side:
    """One side of a diff: a stored version (`version` set) or a draft."""

    persona: str
    expr: str
    action: str = "tag"
    mode: str = "adhoc"
    exit_policy: str = "keep"
    version: int | None = None

    @classmethod
    def of(cls, c: Criterion) -> Side:
        return cls(
            persona=c.persona_key,
            expr=c.expr,
            action=c.action.value,
            mode=c.mode.value,
            exit_policy=c.exit_policy.value,
            version=c.version,
        )


def membership_diff(store: Store, old: Side, new: Side, *, sample_size: int = 10) -> dict[str, Any]:
    """Whom `old` and `new` catch now, and what `new` would move (see the module doc).

    {"old_count", "new_count", "gained": {"count", "sample"}, "lost": {...},
    "would_enter", "would_exit"}; samples are contact ids, lowest pk first.
    Nothing is written (temp tables only)."""
    t = store.tables
    c = t.contacts
    now = utcnow()
    with store.read() as conn:
        catalog = store.catalog(conn)
        pks = persona_pks(conn, store)
        held: list[TempPks] = []
        for name, side in (("pt_diff_old", old), ("pt_diff_new", new)):
            compiled = compile_criterion(side.expr, catalog)
            cond = compile_sql(
                compiled.ast,
                tables=t,
                catalog=catalog,
                persona_pks=pks,
                as_of=now,
                dialect=store.dialect,
            )
            pks_of = TempPks(conn, name)
            pks_of.fill(conn, select(c.c.pk).where(cond))
            held.append(pks_of)
        a, b = (h.contains(c.c.pk) for h in held)

        def count(where: Any) -> int:
            return int(conn.scalar(select(func.count()).select_from(c).where(where)) or 0)

        def part(where: Any) -> dict[str, Any]:
            sample = conn.scalars(select(c.c.id).where(where).order_by(c.c.pk).limit(sample_size))
            return {"count": count(where), "sample": list(sample)}

        result: dict[str, Any] = {
            "old_count": count(a),
            "new_count": count(b),
            "gained": part(and_(b, ~a)),
            "lost": part(and_(a, ~b)),
        }
        for h in held:
            h.drop(conn)
    # The preview applies the writers' rules (pins win) for the new side's action.
    counted = preview(
        store,
        new.expr,
        persona=new.persona,
        as_of=now,
        sample_size=0,
        action=new.action,
        mode=new.mode,
        exit_policy=new.exit_policy,
    )
    result["would_enter"] = counted["would_enter"]
    result["would_exit"] = counted["would_exit"]
    return result


def _events(store: Store, name: str) -> dict[int, list[dict[str, Any]]]:
    """Audit events of criterion `name` by version, oldest first: the ones about
    the whole criterion (add, edit: detail names the version) and the ones about
    one version (`name@version`: pause, resume, retire, backfill, swap)."""
    e = store.tables.audit_events
    query = (
        select(e)
        .where(or_(e.c.target == name, e.c.target.startswith(f"{name}@", autoescape=True)))
        .where(e.c.action.startswith("criterion.", autoescape=True))
        .order_by(e.c.seq)
    )
    with store.read() as conn:
        rows = conn.execute(query).all()
    out: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        detail = None if r.detail is None else json.loads(r.detail)
        version: Any = None
        if r.target == name:
            version = (detail or {}).get("version")
        else:
            tail = r.target[len(name) + 1 :]
            version = int(tail) if tail.isdigit() else None
        if not isinstance(version, int):
            continue
        out.setdefault(version, []).append(
            {
                "at": iso(r.at),
                "action": r.action.removeprefix("criterion."),
                "actor": r.actor,
                "source": r.source,
                "detail": detail,
            }
        )
    return out


def state_of(c: Criterion, events: list[dict[str, Any]]) -> str:
    """A version's state: its stored status, except that a `building` version whose
    backfill the stream has started (and not swapped in since) is `backfilling`."""
    if c.status != STATUS_BUILDING:
        return c.status
    moves = [ev["action"] for ev in events if ev["action"] in ("backfill", "swap", "resume")]
    return BACKFILLING if moves and moves[-1] == "backfill" else STATUS_BUILDING


def history(store: Store, name: str) -> list[dict[str, Any]]:
    """Every version of `name`, oldest first, each with its state and its events."""
    with store.read() as conn:
        versions = criterion_versions(conn, store, name)
    events = _events(store, name)
    return [
        {
            "criterion": v,
            "state": state_of(v, events.get(v.version, [])),
            "events": events.get(v.version, []),
        }
        for v in versions
    ]


def progress(store: Store, name: str) -> dict[str, Any]:
    """Where the newest version of `name` is: its state and since when; while it
    is on its way in, the versions the stream builds first (one at a time), the
    stream's lag and a backfill error; once swapped in, what the swap did."""
    from personatag.engines.local.stream.status import status as stream_status

    versions = history(store, name)
    newest = versions[-1]
    c: Criterion = newest["criterion"]
    events = newest["events"]
    since: datetime | str = events[-1]["at"] if events else c.created_at
    swaps = [ev for ev in events if ev["action"] == "swap"]
    out: dict[str, Any] = {
        "name": name,
        "version": c.version,
        "mode": c.mode.value,
        "status": c.status,
        "state": newest["state"],
        "since": since,
        "building": newest["state"] in (STATUS_BUILDING, BACKFILLING),
        "swap": None,
        "ahead": [],
        "error": None,
        "stream": None,
    }
    if swaps:
        last = swaps[-1]
        out["swap"] = {"at": last["at"], **(last["detail"] or {})}
    if out["building"]:
        s = stream_status(store)
        out["stream"] = {
            "lag_changes": s["lag_changes"],
            "lag_seconds": s["lag_seconds"],
            "updated_at": s["updated_at"],
        }
        label = c.label
        building = [x["criterion"] for x in s["criteria"] if x["status"] == STATUS_BUILDING]
        out["ahead"] = building[: building.index(label)] if label in building else []
        failed = [e for e in s["recent_errors"] if f"backfill of {label}:" in (e["error"] or "")]
        if failed:
            out["error"] = failed[0]["error"]
    return out


def last_changes(store: Store) -> dict[str, datetime]:
    """Per criterion name, when its definition or lifecycle last changed (audit log)."""
    e = store.tables.audit_events
    query = (
        select(e.c.target, func.max(e.c.at))
        .where(e.c.action.startswith("criterion.", autoescape=True), e.c.target.is_not(None))
        .group_by(e.c.target)
    )
    out: dict[str, datetime] = {}
    with store.read() as conn:
        for target, at in conn.execute(query):
            name = target.split("@", 1)[0]
            if name not in out or at > out[name]:
                out[name] = at
    return out
