"""AST -> a Python closure, built once per criterion, for streaming evaluation.

The closure returns True, False or None (UNKNOWN) with the same three-valued
logic as the SQL compiler; callers match a contact only on True.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeAlias

from personatag.criteria.ast import (
    COMPARATORS,
    And,
    Between,
    Compare,
    Contains,
    Count,
    In,
    IsNull,
    Node,
    Not,
    Or,
    Persona,
    StringMatch,
    Value,
    Within,
)
from personatag.criteria.check import check
from personatag.domain import Catalog, fold_case, utcnow

Truth: TypeAlias = bool | None


@dataclass(frozen=True, slots=True)
class EvalInput:
    """One contact's data as the evaluator sees it.

    `contact` maps field names to str / int / float / bool / UTC-aware datetime /
    list[str] / None (a missing key is None). `reads` pairs each read's
    publication fields with its read_at; `personas` are the keys the contact holds.
    """

    contact: Mapping[str, Any]
    reads: Sequence[tuple[Mapping[str, Any], datetime]] = ()
    logins: Sequence[datetime] = ()
    personas: frozenset[str] = frozenset()
    as_of: datetime = field(default_factory=utcnow)
    # Counts already computed for this input: criteria evaluated on the same
    # input share `count(read where sector = "Energy", 90d)` whatever they compare
    # it to (and the stream its earliest future-stamped event).
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


Evaluator: TypeAlias = Callable[[EvalInput], Truth]
# (row, input) -> truth; row is the contact, or a publication inside count(read where ...)
_Fn: TypeAlias = Callable[[Mapping[str, Any], EvalInput], Truth]


def compile_python(node: Node, catalog: Catalog) -> Evaluator:
    """A function EvalInput -> True / False / None (UNKNOWN) for `node`.

    The tree is walked once here; calls only run the prebuilt closures. Persona
    keys are not looked up in the catalog: an unknown persona is simply not held.
    """
    check(node, catalog, personas=False)
    fn = _compile(node)

    def evaluate(inp: EvalInput) -> Truth:
        return fn(inp.contact, inp)

    return evaluate


def publication_filter(where: Node | None) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a publication counts for `count(read where ...)` (any, without where)."""
    if where is None:
        return lambda pub: True
    fn = _compile(where)
    dummy = EvalInput(contact={})
    return lambda pub: fn(pub, dummy) is True


def like_matcher(pattern: str) -> Callable[[str], bool]:
    """LIKE semantics: % is any run of characters, _ exactly one, nothing escapes.

    Linear in the text for a given pattern (no backtracking regex): the pieces
    between the %s have a fixed length, so taking each middle piece at its
    leftmost place that fits never loses a match.
    """
    pieces = [_piece(p) for p in pattern.split("%")]
    if len(pieces) == 1:
        only = pieces[0]
        return lambda x: len(x) == only.size and only.at(x, 0)
    first, middle, last = pieces[0], [p for p in pieces[1:-1] if p.size], pieces[-1]

    def match(x: str) -> bool:
        end = len(x) - last.size
        if end < first.size or not first.at(x, 0) or not last.at(x, end):
            return False
        pos = first.size
        for piece in middle:
            found = piece.find(x, pos, end)
            if found < 0:
                return False
            pos = found + piece.size
        return True

    return match


@dataclass(frozen=True, slots=True)
class _Piece:
    """A %-free part of a LIKE pattern: literal text where `_` is any one character."""

    text: str
    size: int
    regex: re.Pattern[str] | None  # set when the piece holds a `_`

    def at(self, x: str, pos: int) -> bool:
        if self.regex is None:
            return x.startswith(self.text, pos)
        return self.regex.match(x, pos) is not None

    def find(self, x: str, pos: int, end: int) -> int:
        """Leftmost start in [pos, end - size], or -1."""
        if self.regex is None:
            return x.find(self.text, pos, end)
        m = self.regex.search(x, pos, end)
        return -1 if m is None else m.start()


def _piece(text: str) -> _Piece:
    if "_" not in text:
        return _Piece(text, len(text), None)
    # no quantifiers: matching costs at most len(text) steps per start position
    body = "".join("." if ch == "_" else re.escape(ch) for ch in text)
    return _Piece(text, len(text), re.compile(body, re.DOTALL))


def _py(value: Value) -> Any:
    return value.value


def _compile(node: Node) -> _Fn:
    match node:
        case And(args):
            return _and(tuple(_compile(a) for a in args))
        case Or(args):
            return _or(tuple(_compile(a) for a in args))
        case Not(arg):
            inner = _compile(arg)

            def not_(row: Mapping[str, Any], inp: EvalInput) -> Truth:
                r = inner(row, inp)
                return None if r is None else not r

            return not_
        case Compare(f, op, value):
            return _on_value(f.name, _compare(op, _py(value)))
        case Between(f, low, high):
            lo, hi = _py(low), _py(high)
            return _on_value(f.name, lambda x: bool(lo <= x <= hi))
        case In(f, values, negated):
            options = frozenset(_py(v) for v in values)
            if negated:
                return _on_value(f.name, lambda x: x not in options)
            return _on_value(f.name, lambda x: x in options)
        case Contains(f, op, values):
            wanted = frozenset(str(v.value) for v in values)
            if op == "contains_all":
                return _on_list(f.name, wanted.issubset)
            return _on_list(f.name, lambda xs: not wanted.isdisjoint(xs))
        case StringMatch(f, op, pattern):
            return _on_value(f.name, _string_match(op, pattern.value))
        case IsNull(f, negated):
            name = f.name
            if negated:
                return lambda row, inp: row.get(name) is not None
            return lambda row, inp: row.get(name) is None
        case Within(f, days):
            return _within(f.name, timedelta(days=days))
        case Count():
            return _count(node)
        case Persona(key):
            return lambda row, inp: key in inp.personas
    raise TypeError(f"not a criteria node: {node!r}")  # pragma: no cover


def _and(fns: tuple[_Fn, ...]) -> _Fn:
    def and_(row: Mapping[str, Any], inp: EvalInput) -> Truth:
        unknown = False
        for fn in fns:
            r = fn(row, inp)
            if r is False:
                return False
            if r is None:
                unknown = True
        return None if unknown else True

    return and_


def _or(fns: tuple[_Fn, ...]) -> _Fn:
    def or_(row: Mapping[str, Any], inp: EvalInput) -> Truth:
        unknown = False
        for fn in fns:
            r = fn(row, inp)
            if r is True:
                return True
            if r is None:
                unknown = True
        return None if unknown else False

    return or_


def _on_value(name: str, test: Callable[[Any], bool]) -> _Fn:
    """A predicate on one field: NULL in, UNKNOWN out."""

    def pred(row: Mapping[str, Any], inp: EvalInput) -> Truth:
        x = row.get(name)
        return None if x is None else test(x)

    return pred


def _on_list(name: str, test: Callable[[Any], Truth]) -> _Fn:
    """A predicate on a list field: NULL in, UNKNOWN out; and UNKNOWN for a
    stored value that is not a list (text another program wrote in a LIST
    column, read as its text: store.types.NotAList), as the store's SQL and
    the columnar copy answer it."""

    def pred(row: Mapping[str, Any], inp: EvalInput) -> Truth:
        xs = row.get(name)
        return None if xs is None or isinstance(xs, str) else test(xs)

    return pred


def _compare(op: str, value: Any) -> Callable[[Any], bool]:
    cmp = COMPARATORS[op]
    return lambda x: bool(cmp(x, value))


def _string_match(op: str, text: str) -> Callable[[str], bool]:
    if op == "starts_with":
        return lambda x: x.startswith(text)
    if op == "ends_with":
        return lambda x: x.endswith(text)
    if op == "like":
        return like_matcher(text)
    folded = like_matcher(fold_case(text))
    return lambda x: folded(fold_case(x))


def _within(name: str, span: timedelta) -> _Fn:
    def within(row: Mapping[str, Any], inp: EvalInput) -> Truth:
        x = row.get(name)
        if x is None:
            return None
        return bool(inp.as_of - span < x <= inp.as_of)

    return within


def _count(node: Count) -> _Fn:
    span = timedelta(days=node.days)
    cmp = COMPARATORS[node.op]
    k = node.value
    key = (node.event, node.where, node.days)
    if node.event == "login":

        def count_logins(row: Mapping[str, Any], inp: EvalInput) -> Truth:
            n = inp.memo.get(key)
            if n is None:
                lo, hi = inp.as_of - span, inp.as_of
                n = inp.memo[key] = sum(1 for at in inp.logins if lo < at <= hi)
            return bool(cmp(n, k))

        return count_logins

    where = None if node.where is None else _compile(node.where)

    def count_reads(row: Mapping[str, Any], inp: EvalInput) -> Truth:
        n = inp.memo.get(key)
        if n is None:
            lo, hi = inp.as_of - span, inp.as_of
            if where is None:
                n = sum(1 for _, at in inp.reads if lo < at <= hi)
            else:
                n = sum(1 for pub, at in inp.reads if lo < at <= hi and where(pub, inp) is True)
            inp.memo[key] = n
        return bool(cmp(n, k))

    return count_reads
