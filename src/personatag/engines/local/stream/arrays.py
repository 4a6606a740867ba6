"""A batch's criteria evaluated as arrays: each criterion once over the batch.

The per-pair path (evaluate.evaluate_batch) runs one Python closure per
(contact, criterion). Here the batch's loaded inputs become a small columnar
frame (engines/columnar/frame.py: the batch's contacts as rows, the
publications, the reads and logins the inputs hold), each touched criterion's
columnar plan runs once over it, and its pairs take their answers from the
mask. The moments at which time alone can change an answer (what
`Ongoing.next_due` gives one pair at a time) are worked out as arrays too, once
per window for the whole batch.

The answers are the per-pair path's: the columnar compiler keeps SQL's three
values, `ilike` folding and the windows `as_of - N < t <= as_of` as the Python
one does (tests/stream/test_arrays.py compares the two on generated criteria
and data). Pair by pair still: criteria that read personas (settled pair by
pair anyway, cascade.py), criteria touched by only a few of the batch's
contacts (a plan over the whole frame would cost more than the closures), and
a criterion the frame cannot evaluate (a stored value its column cannot
encode, a plan that fails): the per-pair path then answers it, errors
included, exactly as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from personatag.criteria import references
from personatag.criteria.to_python import EvalInput
from personatag.domain import Catalog, FieldType
from personatag.engines.columnar.compile import ColumnarPlan, compile_columnar
from personatag.engines.columnar.compile_values import DAY_US, EPOCH, micros
from personatag.engines.columnar.encode import encode, raw_from_python
from personatag.engines.columnar.frame import Array, Column, Events, Frame, Table
from personatag.engines.local.stream import ongoing as og
from personatag.engines.local.stream.evaluate import Evaluated, eval_one
from personatag.engines.local.stream.inputs import Publications

log = logging.getLogger(__name__)

# A criterion touched by fewer of the batch's contacts than this is answered
# pair by pair: its plan would run over every row of the frame.
MIN_PAIRS = 24
NEVER = np.iinfo(np.int64).max  # no moment: time alone never changes the answer
# The last moment a datetime holds: a window's edge beyond it is an error the
# per-pair path reports (OverflowError), so such a criterion goes pair by pair.
LAST = micros(datetime.max.replace(tzinfo=UTC))
_US = timedelta(microseconds=1)


# Per kind, whether a stored value is one the column holds as the Python
# evaluator sees it. numpy would turn 2.5 into 2 and "3" into 3 in an int64
# array, and 2 into True in a bool one, where the Python evaluator compares the
# value itself (SQLite keeps whatever a raw SQL write stored).
_HOLDS: dict[FieldType, Callable[[Any], bool]] = {
    FieldType.INT: lambda v: type(v) is int or type(v) is bool,
    FieldType.FLOAT: lambda v: type(v) is float or (type(v) in (int, bool) and abs(v) <= 2**53),
    FieldType.BOOL: lambda v: type(v) is bool or (type(v) is int and v in (0, 1)),
    FieldType.STRING: lambda v: type(v) is str,
    FieldType.LIST: lambda v: type(v) is list and all(type(x) is str for x in v),
    FieldType.TIMESTAMP: lambda v: isinstance(v, datetime) and v.tzinfo is not None,
}


def column(kind: FieldType, values: list[Any]) -> Column:
    """Python values (None: NULL; timestamps as UTC-aware datetimes) as a
    frame column; raises TypeError on a value the column would not hold as
    it is (the caller then evaluates pair by pair)."""
    holds = _HOLDS[kind]
    for v in values:
        if v is not None and not holds(v):
            raise TypeError(f"a {kind.value} field holds {v!r}")
    if kind is FieldType.TIMESTAMP:
        values = [None if v is None else micros(v) for v in values]
    return encode(raw_from_python(kind, values))


class _Columns(Mapping[str, Column]):
    """Columns built on first use from a function giving a field's values; a
    field that cannot be encoded raises when a plan reads it."""

    def __init__(self, kinds: Mapping[str, FieldType], values: Callable[[str], list[Any]]):
        self._kinds = kinds
        self._values = values
        self._built: dict[str, Column | Exception] = {}

    def __getitem__(self, name: str) -> Column:
        got = self._built.get(name)
        if got is None:
            kind = self._kinds[name]  # KeyError: not a field of this table
            try:
                got = column(kind, self._values(name))
            except Exception as exc:  # kept: the next criterion reading it fails at once
                got = exc
            self._built[name] = got
        if isinstance(got, Exception):
            raise got
        return got

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


class Plans:
    """What the array path keeps between batches: each criterion's compiled
    plan (for as long as the index that holds it) and the publications as a
    frame table (for as long as the Publications' rows)."""

    def __init__(self) -> None:
        self._index: og.Index | None = None
        self._plans: dict[int, ColumnarPlan | None] = {}
        self._pubs: dict[int, dict[str, Any]] | None = None
        self._pub_table: Table | None = None
        self._pub_row: dict[int, int] = {}  # id(publication's dict) -> row
        self.answered = 0  # criteria answered as arrays (once per batch each)
        self._pub_fields: dict[int, frozenset[str]] = {}

    def plan(self, index: og.Index, crit: og.Ongoing, catalog: Catalog) -> ColumnarPlan | None:
        """`crit`'s columnar plan; None when it does not compile (pair by pair)."""
        if index is not self._index:
            self._index, self._plans, self._pub_fields = index, {}, {}
        if crit.pk not in self._plans:
            try:
                self._plans[crit.pk] = compile_columnar(crit.node, catalog)
            except Exception as exc:  # the per-pair path answers it, as before
                log.info("criterion %s is evaluated pair by pair: %s", crit.label, exc)
                self._plans[crit.pk] = None
        return self._plans[crit.pk]

    def publication_fields(self, crit: og.Ongoing) -> frozenset[str]:
        """The publication fields `crit`'s `count(read where ...)` read."""
        got = self._pub_fields.get(crit.pk)
        if got is None:
            got = self._pub_fields[crit.pk] = references(crit.node).publication_fields
        return got

    def publications(self, pubs: Publications, catalog: Catalog) -> tuple[Table, dict[int, int]]:
        """The publications as a frame table, and each one's row by the identity
        of its dict (the inputs' reads hold those very dicts)."""
        if self._pub_table is None or self._pubs is not pubs.by_pk:
            pks = sorted(pubs.by_pk)
            rows = [pubs.by_pk[p] for p in pks]
            kinds = dict(catalog.publication_fields)
            self._pub_table = Table(
                np.asarray(pks, dtype=np.int64),
                _Columns(kinds, lambda name: [r.get(name) for r in rows]),
            )
            self._pub_row = {id(r): i for i, r in enumerate(rows)}
            self._pubs = pubs.by_pk
        return self._pub_table, self._pub_row


class _Batch:
    """The batch's contacts as a frame, and per window the next moment time
    alone moves each contact's answer (computed on first use)."""

    def __init__(
        self,
        cpks: list[int],
        inputs: Mapping[int, EvalInput],
        catalog: Catalog,
        publications: Table,
        pub_row: Mapping[int, int],
        now: datetime,
    ) -> None:
        self.n = len(cpks)
        self.as_of = now
        self.now = micros(now)
        found = [inputs[c] for c in cpks]
        contacts = Table(
            np.asarray(cpks, dtype=np.int64),
            _Columns(catalog.contact_fields, lambda name: [i.contact.get(name) for i in found]),
        )
        read_row: list[int] = []
        read_at: list[int] = []
        read_pub: list[int] = []
        login_row: list[int] = []
        login_at: list[int] = []
        for row, inp in enumerate(found):
            for pub, at in inp.reads:
                read_row.append(row)
                read_at.append(micros(at))
                read_pub.append(pub_row[id(pub)])
            for at in inp.logins:
                login_row.append(row)
                login_at.append(micros(at))
        self.events = {
            og.EVENT_READ: (np.asarray(read_row, np.int32), np.asarray(read_at, np.int64)),
            og.EVENT_LOGIN: (np.asarray(login_row, np.int32), np.asarray(login_at, np.int64)),
        }
        rr, ra = self.events[og.EVENT_READ]
        lr, la = self.events[og.EVENT_LOGIN]
        self.frame = Frame(
            contacts=contacts,
            publications=publications,
            reads=(Events(rr, ra, np.asarray(read_pub, np.int32)),) if len(rr) else (),
            logins=(Events(lr, la),) if len(lr) else (),
        )
        self._moves: dict[tuple[str, int], Array] = {}
        self._ahead: dict[str, Array] = {}

    def _times(self, name: str) -> tuple[Array, Array]:
        """(row, microseconds) of each read or login (`name`), or of each
        non-NULL value of the timestamp field `name`."""
        got = self.events.get(name)
        if got is not None:
            return got
        col = self.frame.contacts.columns[name]
        rows = np.arange(self.n, dtype=np.int32)
        if col.nulls is None:
            return rows, col.values
        present = ~col.nulls
        return rows[present], col.values[present]

    def moves(self, name: str, days: int) -> Array:
        """Per row, the first moment after now at which a time of `name` enters
        or leaves a window of `days` (NEVER: none); see og._window_moves."""
        key = (name, days)
        got = self._moves.get(key)
        if got is None:
            rows, at = self._times(name)
            out = np.full(self.n, NEVER, dtype=np.int64)
            if len(rows):
                if int(at.max()) > LAST - days * DAY_US:
                    raise OverflowError(f"a time of {name} + {days} days is past year 9999")
                leave = at + days * DAY_US
                first = np.where(at > self.now, at, NEVER)
                first = np.minimum(first, np.where(leave > self.now, leave, NEVER))
                np.minimum.at(out, rows, first)
            got = self._moves[key] = out
        return got

    def ahead(self, name: str) -> Array:
        """Per row, the earliest time of `name` after now (NEVER: none); see
        og._first_ahead."""
        got = self._ahead.get(name)
        if got is None:
            rows, at = self._times(name)
            out = np.full(self.n, NEVER, dtype=np.int64)
            later = at > self.now
            np.minimum.at(out, rows[later], at[later])
            got = self._ahead[name] = out
        return got

    def due(self, crit: og.Ongoing, rows: Array, hit: Array) -> Array:
        """`crit`'s next re-check (microseconds, NEVER: none) for `rows`, as
        Ongoing.next_due gives it pair by pair."""
        moves = np.full(len(rows), NEVER, dtype=np.int64)
        for name, days in crit.windows:
            np.minimum(moves, self.moves(name, days)[rows], out=moves)
        if not crit.falls_only:
            return moves
        ahead = np.full(len(rows), NEVER, dtype=np.int64)
        for name, _ in crit.windows:
            np.minimum(ahead, self.ahead(name)[rows], out=ahead)
        return np.where(hit, moves, ahead)


def evaluate_batch(
    work: dict[int, set[int]],
    inputs: dict[int, EvalInput],
    index: og.Index,
    plans: Plans,
    catalog: Catalog,
    pubs: Publications,
) -> Evaluated:
    """Evaluate each contact's criteria in `work` on its loaded input: the
    criteria touched by many of them as arrays, the rest pair by pair (see the
    module doc). Contacts without an input are gone and skipped.

    The answers come out in the per-pair path's order (contact by contact, as
    `work` holds them): the applier decides in that order, and which of two
    criteria feeding one persona the log names for an enter depends on it."""
    by_crit: dict[int, list[int]] = {}
    for cpk, crits in work.items():
        if cpk in inputs:
            for p in crits:
                got = by_crit.get(p)
                if got is None:
                    by_crit[p] = [cpk]
                else:
                    got.append(cpk)
    batched = [
        p for p, cpks in by_crit.items() if len(cpks) >= MIN_PAIRS and not index.by_pk[p].personas
    ]
    # criterion pk -> (the contacts it matches, contact pk -> next re-check or None)
    answered: dict[int, tuple[set[int], dict[int, datetime | None] | None]] = {}
    if batched:
        cpks_all = sorted({c for p in batched for c in by_crit[p]})
        try:
            table, pub_row = plans.publications(pubs, catalog)
            batch = _Batch(cpks_all, inputs, catalog, table, pub_row, inputs[cpks_all[0]].as_of)
        except Exception as exc:  # a value the frame cannot hold: pair by pair
            log.info("the stream batch is evaluated pair by pair: %s", exc)
        else:
            for p in batched:
                answer = _as_arrays(batch, index.by_pk[p], by_crit[p], index, plans, catalog)
                if answer is not None:
                    answered[p] = answer
    out = Evaluated(inputs, [], set(), {}, [])
    evaluated, matched, due = out.evaluated, out.matched, out.due
    by_pk = index.by_pk
    for cpk, crits in work.items():
        inp = inputs.get(cpk)
        if inp is None:
            continue
        for p in crits:
            mine = answered.get(p)
            if mine is None:
                eval_one(by_pk[p], cpk, inp, out)
                continue
            evaluated.append((cpk, p))
            if cpk in mine[0]:
                matched.add((cpk, p))
            if mine[1] is not None:
                due[(p, cpk)] = mine[1][cpk]
    return out


def _as_arrays(
    batch: _Batch,
    crit: og.Ongoing,
    cpks: list[int],
    index: og.Index,
    plans: Plans,
    catalog: Catalog,
) -> tuple[set[int], dict[int, datetime | None] | None] | None:
    """`crit` for `cpks` over the batch's frame: the contacts it matches and,
    for a window criterion, each one's next re-check; None when the frame
    cannot answer it."""
    plan = plans.plan(index, crit, catalog)
    if plan is None:
        return None
    try:
        # Every column the criterion reads, built before the plan runs: a plan
        # may skip one (`count(...) >= 0`) whose odd value the per-pair path
        # would fail on.
        for name in crit.fields:
            batch.frame.contacts.columns[name]
        for name in plans.publication_fields(crit):
            batch.frame.publications.columns[name]
        rows = np.searchsorted(batch.frame.contacts.pk, cpks)
        hit = plan(batch.frame, batch.as_of)[rows]
        due = batch.due(crit, rows, hit) if crit.windows else None
    except Exception as exc:
        log.info("criterion %s is evaluated pair by pair: %s", crit.label, exc)
        return None
    plans.answered += 1
    pks = np.asarray(cpks, dtype=np.int64)
    hits = set(pks[hit].tolist())
    if due is None:
        return hits, None
    # Most pairs have no next moment: None, and a datetime for the rest.
    nexts: dict[int, datetime | None] = dict.fromkeys(cpks)
    timed = due != NEVER
    for cpk, at in zip(pks[timed].tolist(), due[timed].tolist(), strict=True):
        nexts[cpk] = EPOCH + at * _US
    return hits, nexts
