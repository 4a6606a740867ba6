"""Attribute predicates over one table's columns (contacts, or publications
inside `count(read where ...)`), as truth masks with SQL's three values.

A `Tri` holds where a predicate is TRUE and where it is FALSE; UNKNOWN is
neither. Most predicates are known on every row, so one of the two masks is
left out (None: the complement of the other) and `not` only swaps the two.
String predicates run once per distinct dictionary value and are gathered
through the codes.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias

import numpy as np

from personatag.criteria.ast import (
    COMPARATORS,
    Between,
    Compare,
    Contains,
    In,
    IsNull,
    Node,
    StringMatch,
    Timestamp,
    Value,
    Within,
)
from personatag.criteria.errors import CriteriaError
from personatag.criteria.to_python import like_matcher
from personatag.domain import FieldType, fold_case
from personatag.engines.columnar.frame import Array, Column, Frame, Table
from personatag.engines.columnar.segment import LazyColumns

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_US = 86_400 * 1_000_000
INT64_LIMIT = 2**63
# At most this many matching dictionary codes are tested with ==; more go
# through a lookup table gathered by the codes.
FEW_CODES = 3


def micros(value: datetime) -> int:
    """Microseconds since the Unix epoch of a UTC-aware datetime."""
    return (value - EPOCH) // timedelta(microseconds=1)


# A mask, or how to compute it when asked (most evaluations never ask for FALSE).
Side: TypeAlias = "Array | Callable[[], Array] | None"


class Tri:
    """Where a predicate is TRUE and where it is FALSE (UNKNOWN: neither).

    Each side is a mask, a function computing it on first use, or None (the
    complement of the other side: no row is UNKNOWN).
    """

    __slots__ = ("_f", "_t")

    def __init__(self, t: Side, f: Side) -> None:
        self._t, self._f = t, f

    @property
    def known(self) -> bool:
        """True when no row is UNKNOWN."""
        return self._t is None or self._f is None

    def true(self) -> Array:
        t = self._t
        if t is None:
            return ~self.false()
        if callable(t):
            t = self._t = t()
        return t

    def false(self) -> Array:
        f = self._f
        if f is None:
            return ~self.true()
        if callable(f):
            f = self._f = f()
        return f

    def negate(self) -> Tri:
        return Tri(self._f, self._t)


class Masks:
    """~nulls per column, kept across evaluations while the column lives."""

    def __init__(self) -> None:
        self._present: dict[int, tuple[weakref.ref[Any], Array]] = {}

    def present(self, nulls: Array) -> Array:
        got = self._present.get(id(nulls))
        if got is not None and got[0]() is nulls:
            return got[1]
        mask = ~np.asarray(nulls, dtype=bool)
        live = {k: v for k, v in self._present.items() if v[0]() is not None}
        live[id(nulls)] = (weakref.ref(nulls), mask)
        self._present = live
        return mask


@dataclass(slots=True)
class Ctx:
    """One evaluation: the frame, the table predicates read, and as_of in microseconds."""

    frame: Frame
    table: Table
    scope: str  # "contacts" or "publications", for messages
    as_of: int
    masks: Masks = field(default_factory=Masks)
    memo: dict[Hashable, Any] = field(default_factory=dict)

    def column(self, name: str) -> Column:
        column = self.table.columns.get(name)
        if column is None:
            raise CriteriaError(
                f"field '{name}' is not in the columnar copy's {self.scope}"
                " (is the copy up to date with the store's schema?)"
            )
        return column

    def nulls(self, name: str) -> Array | None:
        """Column `name`'s NULL mask (None: no NULLs), read without its values
        where the copy can."""
        columns = self.table.columns
        if isinstance(columns, LazyColumns) and name in columns:
            return columns.nulls(name)
        return self.column(name).nulls

    def kind(self, name: str) -> FieldType:
        """Column `name`'s type, read without its values where the copy can."""
        columns = self.table.columns
        if isinstance(columns, LazyColumns) and name in columns:
            return columns.kind(name)
        return self.column(name).kind

    def with_nulls(self, column: Column, pred: Array, *, false_on_null: bool = False) -> Tri:
        """`pred` where the value is present, UNKNOWN where it is NULL.

        `pred` must be the caller's own (it is changed in place);
        `false_on_null`: it is already False on every NULL.
        """
        if column.nulls is None:
            return Tri(pred, None)
        present = self.masks.present(column.nulls)
        if not false_on_null:
            pred &= present
        # FALSE: present and not TRUE; TRUE lies inside present
        return Tri(pred, lambda: present ^ pred)


Leaf: TypeAlias = Callable[[Ctx], Tri]


# ---- per-dictionary tables ------------------------------------------------------


class _TableCache:
    """The last dictionary a string predicate ran on and its result per code
    (one attribute, replaced whole: safe when threads share a plan)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: tuple[weakref.ref[Any], Array] | None = None

    def get(self, dictionary: Array, test: Callable[[str], bool]) -> Array:
        last = self.last
        if last is not None and last[0]() is dictionary:
            return last[1]
        result = np.fromiter((bool(test(s)) for s in dictionary), dtype=bool, count=len(dictionary))
        self.last = (weakref.ref(dictionary), result)
        return result


def _gather(codes: Array, table: Array) -> Array:
    """table[codes] for codes >= 0, False for -1 (NULL)."""
    code = codes.dtype.type
    hits = np.flatnonzero(table)
    misses = np.flatnonzero(~table)
    if len(hits) == 0:
        return np.zeros(len(codes), dtype=bool)
    if len(misses) == 0:
        return codes >= 0
    if len(hits) <= FEW_CODES:
        out = codes == code(hits[0])
        for h in hits[1:]:
            out |= codes == code(h)
        return out
    if len(misses) <= FEW_CODES:
        out = codes >= 0
        for m in misses:
            out &= codes != code(m)
        return out
    return np.append(table, False)[codes]


def _string_leaf(name: str, test: Callable[[str], bool]) -> Leaf:
    cache = _TableCache()

    def leaf(ctx: Ctx) -> Tri:
        column = ctx.column(name)
        pred = _gather(column.values, cache.get(column.dictionary, test))
        return ctx.with_nulls(column, pred, false_on_null=True)

    return leaf


# ---- numbers, booleans, timestamps ------------------------------------------------


def _scalar(kind: FieldType, value: Value) -> Any:
    if isinstance(value, Timestamp):
        return micros(value.value)
    return value.value


def _ordered(values: Array, op: str, v: Any, kind: FieldType) -> Array:
    """`values op v`, exact for an int column against a fractional or huge
    float, and for a float column against a whole number beyond 2**53."""
    if kind in (FieldType.INT, FieldType.TIMESTAMP) and isinstance(v, float):
        if v >= INT64_LIMIT or v < -INT64_LIMIT:
            under = v > 0  # every int64 lies below v
            holds = op in ("<", "<=", "!=") if under else op in (">", ">=", "!=")
            return np.full(len(values), holds, dtype=bool)
        if v.is_integer():
            v = int(v)
        elif op in ("=", "!="):
            return np.full(len(values), op == "!=", dtype=bool)
        elif op in ("<", "<="):
            return values <= math.floor(v)
        else:
            return values >= math.ceil(v)
    if kind is FieldType.FLOAT and type(v) is int and float(v) != v:
        # A whole number no float64 holds (beyond 2**53): compared as the
        # nearest floats below and above it, as Python and SQL compare exactly.
        f = float(v)
        below = math.nextafter(f, -math.inf) if f > v else f
        above = math.nextafter(f, math.inf) if f < v else f
        if op in ("=", "!="):
            return np.full(len(values), op == "!=", dtype=bool)
        if op in ("<", "<="):
            return values <= below
        return values >= above
    return np.asarray(COMPARATORS[op](values, v), dtype=bool)


def compare_leaf(node: Compare, kind: FieldType) -> Leaf:
    name, op = node.field.name, node.op
    if kind == FieldType.STRING:
        text = str(node.value.value)
        cmp = COMPARATORS[op]
        return _string_leaf(name, lambda s: bool(cmp(s, text)))
    v = _scalar(kind, node.value)

    def leaf(ctx: Ctx) -> Tri:
        column = ctx.column(name)
        return ctx.with_nulls(column, _ordered(column.values, op, v, kind))

    return leaf


def between_leaf(node: Between, kind: FieldType) -> Leaf:
    name = node.field.name
    if kind == FieldType.STRING:
        lo_s, hi_s = str(node.low.value), str(node.high.value)
        return _string_leaf(name, lambda s: lo_s <= s <= hi_s)
    lo, hi = _scalar(kind, node.low), _scalar(kind, node.high)

    def leaf(ctx: Ctx) -> Tri:
        column = ctx.column(name)
        values = column.values
        pred = _ordered(values, ">=", lo, kind)
        pred &= _ordered(values, "<=", hi, kind)
        return ctx.with_nulls(column, pred)

    return leaf


def in_leaf(node: In, kind: FieldType) -> Leaf:
    name, negated = node.field.name, node.negated
    if kind == FieldType.STRING:
        options = frozenset(str(v.value) for v in node.values)
        if negated:
            return _string_leaf(name, lambda s: s not in options)
        return _string_leaf(name, lambda s: s in options)
    scalars = [_scalar(kind, v) for v in node.values]

    def leaf(ctx: Ctx) -> Tri:
        column = ctx.column(name)
        pred = _ordered(column.values, "=", scalars[0], kind)
        for v in scalars[1:]:
            pred |= _ordered(column.values, "=", v, kind)
        return ctx.with_nulls(column, ~pred if negated else pred)

    return leaf


def contains_leaf(node: Contains) -> Leaf:
    name, op = node.field.name, node.op
    wanted = sorted(frozenset(str(v.value) for v in node.values))

    def leaf(ctx: Ctx) -> Tri:
        column = ctx.column(name)
        dictionary, items, offsets = column.dictionary, column.items, column.offsets
        n = ctx.table.n
        codes = _codes_of(dictionary, wanted)
        if op == "contains_all":
            if len(codes) < len(wanted):  # a wanted string no row holds
                pred = np.zeros(n, dtype=bool)
            else:
                pred = _holds_any(items, offsets, codes[:1])
                for code in codes[1:]:
                    pred &= _holds_any(items, offsets, [code])
        else:
            pred = _holds_any(items, offsets, codes)
        return ctx.with_nulls(column, pred)

    return leaf


def _codes_of(dictionary: Array, wanted: list[str]) -> list[int]:
    index = {s: i for i, s in enumerate(dictionary) if s in wanted} if len(wanted) else {}
    return [index[s] for s in wanted if s in index]


def _holds_any(items: Array, offsets: Array, codes: list[int]) -> Array:
    """Per row: whether any of its items is one of `codes`."""
    n = len(offsets) - 1
    if not codes:
        return np.zeros(n, dtype=bool)
    at = np.flatnonzero(np.isin(items, np.asarray(codes, dtype=items.dtype)))
    # the row holding item `i` is the last whose offset is <= i (empty rows skipped)
    rows = np.searchsorted(offsets, at, side="right") - 1
    out = np.zeros(n, dtype=bool)
    out[rows] = True
    return out


def string_match_leaf(node: StringMatch) -> Leaf:
    name, op, text = node.field.name, node.op, node.pattern.value
    test: Callable[[str], bool]
    if op == "starts_with":
        test = lambda s: s.startswith(text)  # noqa: E731
    elif op == "ends_with":
        test = lambda s: s.endswith(text)  # noqa: E731
    elif op == "like":
        test = like_matcher(text)
    else:
        folded = like_matcher(fold_case(text))
        test = lambda s: folded(fold(s))  # noqa: E731
    return _string_leaf(name, test)


def fold(value: str) -> str:
    """fold_case, with ASCII text (most values) lowered in one call: there both agree."""
    return value.lower() if value.isascii() else fold_case(value)


def is_null_leaf(node: IsNull) -> Leaf:
    name, negated = node.field.name, node.negated

    def leaf(ctx: Ctx) -> Tri:
        found = ctx.nulls(name)
        n = ctx.table.n
        nulls = np.zeros(n, dtype=bool) if found is None else np.array(found, dtype=bool)
        return Tri(None, nulls) if negated else Tri(nulls, None)

    return leaf


def within_leaf(node: Within) -> Leaf:
    name, span = node.field.name, node.days * DAY_US

    def leaf(ctx: Ctx) -> Tri:
        column = ctx.column(name)
        values = column.values
        pred = values > ctx.as_of - span
        pred &= values <= ctx.as_of
        return ctx.with_nulls(column, pred)

    return leaf


def attribute_leaf(node: Node, kind: FieldType) -> Leaf:
    """The leaf for an attribute predicate on a field the catalog types `kind`;
    a frame whose column has another type is an error, not a wrong answer."""
    leaf = _typed_leaf(node, kind)
    name: str = getattr(node, "field").name  # noqa: B009 - every attribute predicate has one

    def checked(ctx: Ctx) -> Tri:
        held = ctx.kind(name)
        if held != kind:
            raise CriteriaError(
                f"field '{name}' is {held} in the columnar copy's {ctx.scope} but {kind}"
                " in the catalog (is the copy up to date with the store's schema?)"
            )
        return leaf(ctx)

    return checked


def _typed_leaf(node: Node, kind: FieldType) -> Leaf:
    match node:
        case Compare():
            return compare_leaf(node, kind)
        case Between():
            return between_leaf(node, kind)
        case In():
            return in_leaf(node, kind)
        case Contains():
            return contains_leaf(node)
        case StringMatch():
            return string_match_leaf(node)
        case IsNull():
            return is_null_leaf(node)
        case Within():
            return within_leaf(node)
    raise TypeError(f"not an attribute predicate: {node!r}")  # pragma: no cover
