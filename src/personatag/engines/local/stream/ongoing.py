"""Ongoing criteria as the stream processor sees them: compiled once, indexed
by what they read, and able to say when time alone can change their answer."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from personatag.criteria import from_json, references
from personatag.criteria.ast import And, Compare, Count, In, Node, Not, Or, Within, to_json
from personatag.criteria.to_python import (
    EvalInput,
    Evaluator,
    compile_python,
    publication_filter,
)
from personatag.domain import Catalog, ExitPolicy, Mode
from personatag.store import Store
from personatag.store.changefeed import KIND_PERSONA, KIND_PIN

log = logging.getLogger(__name__)

# Statuses of an ongoing criterion version (ad hoc criteria stay "active").
BUILDING = "building"  # waiting for its backfill, then swaps in
ACTIVE = "active"  # kept true by the stream
PAUSED = "paused"  # the stream skips it; its memberships stay
RETIRED = "retired"  # its memberships were removed
SUPERSEDED = "superseded"  # a newer version swapped in
STATUSES = (BUILDING, ACTIVE, PAUSED, RETIRED, SUPERSEDED)

TOUCHED_CACHE = 10_000  # distinct (kind, fields) answers an index keeps

# Names a contact change's `fields` can hold besides contact fields.
EVENT_READ = "read"
EVENT_LOGIN = "login"


@dataclass(frozen=True, eq=False)
class Ongoing:
    pk: int
    name: str
    version: int
    persona_pk: int
    persona_key: str
    exit_remove: bool
    status: str
    node: Node
    evaluate: Evaluator
    fields: frozenset[str]
    events: frozenset[str]
    personas: frozenset[str]
    # (event or field name, days) for every time window the criterion has.
    windows: tuple[tuple[str, int], ...]
    # True when time alone can only turn the answer from true to false.
    falls_only: bool
    read_days: int = 0
    login_days: int = 0
    # A field and the values it must have for the criterion to match (a
    # top-level `field = v` or `field in (...)`); None when there is none.
    guard: tuple[str, frozenset[Any]] | None = None
    # One test per count(read where ...): does reading this publication count?
    read_filters: tuple[Callable[[Mapping[str, Any]], bool], ...] = ()
    # Those counts' `where`s as text (criteria with the same ones share their
    # tests: Index.touched_by_reads).
    read_wheres: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def next_due(self, inp: EvalInput, matched: bool) -> datetime | None:
        """When time alone could next change this contact's answer (None: never).

        Events and timestamps leave windows as time passes, and those stamped
        after `inp.as_of` (a clock ahead of ours, a read stamped before its
        transaction committed) enter them when their moment comes: that moment
        is a re-check for members and non-members alike."""
        if not self.windows:
            return None
        if self.falls_only and not matched:
            # Time can only bring this contact in through what lies ahead.
            best: datetime | None = None
            for name, _ in self.windows:
                at = _first_ahead(inp, name)
                if at is not None and (best is None or at < best):
                    best = at
            return best
        best = None
        for name, days in self.windows:
            at = _window_moves(inp, name, days)
            if at is not None and (best is None or at < best):
                best = at
        return best


def _window_moves(inp: EvalInput, name: str, days: int) -> datetime | None:
    """The first moment after `inp.as_of` at which a read or login (`name`), or
    the timestamp field `name`, enters or leaves a window of `days` (computed
    once per input: the criteria evaluated for a contact share a few windows)."""
    key = ("moves", name, days)
    memo = inp.memo
    if key in memo:
        found: datetime | None = memo[key]
        return found
    now = inp.as_of
    span = timedelta(days=days)
    times: Iterable[datetime]
    if name == EVENT_READ:
        times = (at for _, at in inp.reads)
    elif name == EVENT_LOGIN:
        times = inp.logins
    else:
        value = inp.contact.get(name)
        times = (value,) if isinstance(value, datetime) else ()
    found = None
    for at in times:
        for moment in (at + span, at):
            if moment > now and (found is None or moment < found):
                found = moment
    memo[key] = found
    return found


def _first_ahead(inp: EvalInput, name: str) -> datetime | None:
    """The earliest read or login (`name`), or the timestamp field `name`, after
    `inp.as_of` (computed once per input and event kind)."""
    now = inp.as_of
    if name not in (EVENT_READ, EVENT_LOGIN):
        value = inp.contact.get(name)
        return value if isinstance(value, datetime) and value > now else None
    key = ("ahead", name)
    if key in inp.memo:
        found: datetime | None = inp.memo[key]
        return found
    times = (at for _, at in inp.reads) if name == EVENT_READ else iter(inp.logins)
    found = min((at for at in times if at > now), default=None)
    inp.memo[key] = found
    return found


def _windows(node: Node) -> tuple[list[tuple[str, int]], bool]:
    """The windows of `node`, and whether time alone can only make it false.

    As time passes, events and timestamps only leave windows: a count falls,
    `within` turns false. `count(...) >= k` can then only fall, `< k` only
    rise, `= k` either way; a `not` swaps the two.
    """
    found: list[tuple[str, int]] = []
    falls_only = True

    def walk(n: Node, positive: bool) -> None:
        nonlocal falls_only
        match n:
            case And(args) | Or(args):
                for a in args:
                    walk(a, positive)
            case Not(arg):
                walk(arg, not positive)
            case Count(event, _where, days, op, value):
                found.append((event, days))
                falls = op in (">", ">=") or (op == "!=" and value == 0)
                rises = op in ("<", "<=") or (op == "=" and value == 0)
                if not ((positive and falls) or (not positive and rises)):
                    falls_only = False
            case Within(f, days):
                found.append((f.name, days))
                if not positive:
                    falls_only = False

    walk(node, True)
    return found, falls_only


def _guard(node: Node) -> tuple[str, frozenset[Any]] | None:
    """A necessary condition `field in values` from the top-level conjuncts."""
    conjuncts = node.args if isinstance(node, And) else (node,)
    for c in conjuncts:
        if isinstance(c, Compare) and c.op == "=":
            return c.field.name, frozenset([c.value.value])
        if isinstance(c, In) and not c.negated:
            return c.field.name, frozenset(v.value for v in c.values)
    return None


def _counts(node: Node) -> list[Count]:
    match node:
        case And(args) | Or(args):
            return [c for a in args for c in _counts(a)]
        case Not(arg):
            return _counts(arg)
        case Count():
            return [node]
    return []


def build(
    pk: int,
    name: str,
    version: int,
    persona_pk: int,
    persona_key: str,
    exit_policy: str,
    status: str,
    ast: Mapping[str, object],
    catalog: Catalog,
) -> Ongoing:
    node = from_json(ast)
    refs = references(node)
    windows, falls_only = _windows(node)
    reads = [n for n in _counts(node) if n.event == EVENT_READ]
    read_filters = tuple(publication_filter(n.where) for n in reads)
    read_wheres = frozenset(
        "" if n.where is None else json.dumps(to_json(n.where), sort_keys=True) for n in reads
    )
    read_days = max((d for n, d in windows if n == EVENT_READ), default=0)
    login_days = max((d for n, d in windows if n == EVENT_LOGIN), default=0)
    return Ongoing(
        pk=pk,
        name=name,
        version=version,
        persona_pk=persona_pk,
        persona_key=persona_key,
        exit_remove=exit_policy == ExitPolicy.REMOVE.value,
        status=status,
        node=node,
        evaluate=compile_python(node, catalog),
        fields=refs.contact_fields,
        events=refs.events,
        personas=refs.personas,
        windows=tuple(windows),
        falls_only=falls_only,
        read_days=read_days,
        login_days=login_days,
        read_filters=read_filters,
        read_wheres=read_wheres,
        guard=_guard(node),
    )


def load(conn: Connection, store: Store, statuses: Iterable[str] = (ACTIVE,)) -> list[Ongoing]:
    """Ongoing criteria in `statuses`; one that no longer compiles is skipped (logged)."""
    t = store.tables
    c, p = t.criteria, t.personas
    rows = conn.execute(
        select(c, p.c.key.label("persona_key"))
        .join(p, p.c.pk == c.c.persona_pk)
        .where(c.c.mode == Mode.ONGOING.value, c.c.status.in_(list(statuses)))
        .order_by(c.c.pk)
    ).all()
    catalog = store.catalog(conn)
    out = []
    for r in rows:
        try:
            out.append(
                build(
                    r.pk,
                    r.name,
                    r.version,
                    r.persona_pk,
                    r.persona_key,
                    r.exit_policy,
                    r.status,
                    json.loads(r.ast),
                    catalog,
                )
            )
        except Exception as exc:  # a criterion broken by a schema change must not stop the rest
            log.error("ongoing criterion %s@%s cannot be compiled: %s", r.name, r.version, exc)
    return out


def dependency_order(criteria: Sequence[Ongoing]) -> list[Ongoing]:
    """The criteria that read personas, each after the criteria feeding the
    personas it reads (a circle is broken by pk order)."""
    readers = [c for c in criteria if c.personas]
    feeds: dict[str, list[Ongoing]] = {}
    for c in readers:
        feeds.setdefault(c.persona_key, []).append(c)
    order: list[Ongoing] = []
    state: dict[int, int] = {}  # 1: being visited, 2: placed

    def visit(c: Ongoing) -> None:
        if state.get(c.pk):
            return
        state[c.pk] = 1
        for key in sorted(c.personas):
            for dep in feeds.get(key, ()):
                visit(dep)
        state[c.pk] = 2
        order.append(c)

    for c in sorted(readers, key=lambda x: x.pk):
        visit(c)
    return order


@dataclass
class Index:
    """Which criteria a change can affect: by contact field, event and persona."""

    criteria: list[Ongoing]
    by_field: dict[str, list[Ongoing]] = field(default_factory=dict)
    by_event: dict[str, list[Ongoing]] = field(default_factory=dict)
    by_persona: dict[str, list[Ongoing]] = field(default_factory=dict)
    by_pk: dict[int, Ongoing] = field(default_factory=dict)
    # The criteria that read personas, in dependency order (see dependency_order).
    persona_order: list[Ongoing] = field(default_factory=list)
    # publication pk -> the criteria a read of it can change (see `touched_by_reads`)
    _by_publication: dict[int, frozenset[int]] = field(default_factory=dict)
    _publications_version: int = -1
    # The read-counting criteria grouped by their counts' `where`s: (the tests
    # of one of them, the pks of all), so a publication is tested once per
    # distinct `where`, not once per criterion (1,000 criteria: ~780 tests
    # per publication before, a few dozen now).
    _read_groups: list[tuple[tuple[Callable[[Mapping[str, Any]], bool], ...], list[int]]] | None = (
        None
    )
    # (change kind, fields) -> the criteria such a change can affect
    _touched: dict[tuple[str, frozenset[str] | None], frozenset[int]] = field(default_factory=dict)
    # The fields the criteria were compiled against (the array path compiles
    # them again for the columnar frame; None: it does not).
    catalog: Catalog | None = None

    def __post_init__(self) -> None:
        for c in self.criteria:
            self.by_pk[c.pk] = c
            for f in c.fields:
                self.by_field.setdefault(f, []).append(c)
            for e in c.events:
                self.by_event.setdefault(e, []).append(c)
            for key in c.personas:
                self.by_persona.setdefault(key, []).append(c)
        self.persona_order = dependency_order(self.criteria)

    def touched_by_reads(
        self, publication_pks: Iterable[int], pubs: Mapping[int, Mapping[str, Any]], version: int
    ) -> AbstractSet[int]:
        """The criteria new reads of these publications can change: those with a
        `count(read ...)` whose `where` the publication passes. (A read leaving
        a window is a time-window re-check, not a change.) Do not modify the
        answer: it may be the index's own cached set."""
        if version != self._publications_version:
            self._by_publication.clear()
            self._publications_version = version
        if self._read_groups is None:
            groups: dict[frozenset[str], tuple[Any, list[int]]] = {}
            for c in self.by_event.get(EVENT_READ, ()):
                groups.setdefault(c.read_wheres, (c.read_filters, []))[1].append(c.pk)
            self._read_groups = list(groups.values())
        found: list[frozenset[int]] = []
        for ppk in publication_pks:
            hit = self._by_publication.get(ppk)
            if hit is None:
                pub = pubs.get(ppk)
                hit = frozenset(
                    pk
                    for tests, pks in self._read_groups
                    if pub is None or any(test(pub) for test in tests)
                    for pk in pks
                )
                self._by_publication[ppk] = hit
            found.append(hit)
        if len(found) == 1:
            return found[0]
        return set().union(*found)

    def touched(self, kind: str, fields: frozenset[str] | None) -> AbstractSet[int]:
        """The pks of the criteria a change of `kind` (to `fields`) can affect
        (cached per kind and fields; do not modify the answer).

        A read change may name its publications in `fields` as `pub:PK`; see
        `read_publications` and `touched_by_reads` for those."""
        key = (kind, fields)
        hit = self._touched.get(key)
        if hit is not None:
            return hit
        if kind in (EVENT_READ, EVENT_LOGIN):
            hit = frozenset(c.pk for c in self.by_event.get(kind, ()))
        elif kind == KIND_PERSONA:  # those personas moved: criteria reading them
            hit = frozenset(c.pk for k in fields or () for c in self.by_persona.get(k, ()))
        elif kind == KIND_PIN:  # a pin-out of those personas lifted: criteria tagging them
            hit = frozenset(c.pk for c in self.criteria if c.persona_key in (fields or ()))
        elif fields is None:
            hit = frozenset(self.by_pk)
        else:
            hit = frozenset(c.pk for f in fields for c in self.by_field.get(f, ()))
        if len(self._touched) < TOUCHED_CACHE:
            self._touched[key] = hit
        return hit


PUB_PREFIX = "pub:"


def read_publications(fields: frozenset[str] | None) -> list[int] | None:
    """The publication pks a read change names (None: not named, assume any)."""
    if not fields:
        return None
    pks = [int(f[len(PUB_PREFIX) :]) for f in fields if f.startswith(PUB_PREFIX)]
    return pks or None
