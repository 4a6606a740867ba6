"""The criteria AST: frozen dataclasses, and their versioned JSON form.

The JSON document is the source of truth that gets stored; the text syntax
(`parse`, `to_text`) is a view of it. Source positions ride along on the nodes
for error messages but never take part in equality.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

from personatag.criteria.errors import CriteriaError
from personatag.criteria.limits import MAX_DEPTH
from personatag.domain import parse_timestamp
from personatag.times import iso

JSON_VERSION = 1

# Words the text syntax reserves; a field cannot be called any of these.
# `read`, `login` (inside count(...)) and `d` (after a window length) are
# contextual and stay usable as field names.
KEYWORDS = frozenset(
    {
        "and",
        "or",
        "not",
        "in",
        "is",
        "null",
        "between",
        "contains",
        "contains_any",
        "contains_all",
        "starts_with",
        "ends_with",
        "like",
        "ilike",
        "within",
        "count",
        "where",
        "persona",
        "true",
        "false",
        "date",
    }
)
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

COMPARE_OPS = ("=", "!=", "<", "<=", ">", ">=")
# The comparison operators as functions: the same table serves Python values
# and SQLAlchemy column expressions.
COMPARATORS: Mapping[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
CONTAINS_OPS = ("contains", "contains_any", "contains_all")
STRING_MATCH_OPS = ("starts_with", "ends_with", "like", "ilike")
EVENTS = ("read", "login")
MAX_DAYS = 100_000  # ~270 years: keeps `as_of - N days` inside datetime's range


@dataclass(frozen=True, slots=True)
class Pos:
    """1-based line and column of a node's first character in the source text."""

    line: int
    col: int


# ---- values ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class String:
    value: str
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Number:
    """An int or a float; the two compare with each other numerically."""

    value: int | float
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Boolean:
    value: bool
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Timestamp:
    """A UTC instant, written `date("2026-06-30")` or `date("2026-06-30T12:00:00Z")`."""

    value: datetime
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


Value: TypeAlias = String | Number | Boolean | Timestamp


@dataclass(frozen=True, slots=True)
class Field:
    """A field name: a contact field, or a publication field inside count(read where ...)."""

    name: str
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


# ---- boolean structure ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class And:
    args: tuple[Node, ...]
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Or:
    args: tuple[Node, ...]
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Not:
    arg: Node
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


# ---- predicates -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compare:
    field: Field
    op: str  # one of COMPARE_OPS
    value: Value
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Between:
    """low <= field <= high (inclusive)."""

    field: Field
    low: Value
    high: Value
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class In:
    field: Field
    values: tuple[Value, ...]
    negated: bool = False
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Contains:
    """List membership; `contains` has exactly one value."""

    field: Field
    op: str  # one of CONTAINS_OPS
    values: tuple[Value, ...]
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class StringMatch:
    field: Field
    op: str  # one of STRING_MATCH_OPS
    pattern: String
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class IsNull:
    field: Field
    negated: bool = False
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Within:
    """as_of - days < field <= as_of."""

    field: Field
    days: int
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Count:
    """count(event [where e], days d) op value; `where` names publication fields."""

    event: str  # one of EVENTS
    where: Node | None
    days: int
    op: str  # one of COMPARE_OPS
    value: int
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, slots=True)
class Persona:
    key: str
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


Predicate: TypeAlias = (
    Compare | Between | In | Contains | StringMatch | IsNull | Within | Count | Persona
)
Node: TypeAlias = And | Or | Not | Predicate


def is_valid_field_name(name: str) -> bool:
    """Whether `name` can be written in the text syntax as a field."""
    return IDENT_RE.fullmatch(name) is not None and name.lower() not in KEYWORDS


def format_timestamp(value: datetime) -> str:
    """ISO-8601 in UTC with a Z; a midnight instant is written as the date alone."""
    value = value.astimezone(UTC)
    if (value.hour, value.minute, value.second, value.microsecond) == (0, 0, 0, 0):
        return value.date().isoformat()
    return iso(value)


# ---- JSON -----------------------------------------------------------------


def to_json(node: Node) -> dict[str, Any]:
    """The versioned JSON document for `node`: {"version": 1, "expr": {...}}."""
    return {"version": JSON_VERSION, "expr": _node_json(node)}


def _value_json(value: Value) -> Any:
    if isinstance(value, Timestamp):
        return {"type": "timestamp", "value": format_timestamp(value.value)}
    return value.value


def _node_json(node: Node) -> dict[str, Any]:
    match node:
        case And(args) | Or(args):
            return {"op": "and" if isinstance(node, And) else "or", "args": _nodes_json(args)}
        case Not(arg):
            return {"op": "not", "arg": _node_json(arg)}
        case Compare(f, op, value):
            return {"op": op, "field": f.name, "value": _value_json(value)}
        case Between(f, low, high):
            return {
                "op": "between",
                "field": f.name,
                "low": _value_json(low),
                "high": _value_json(high),
            }
        case In(f, values, negated):
            return {
                "op": "not_in" if negated else "in",
                "field": f.name,
                "values": [_value_json(v) for v in values],
            }
        case Contains(f, "contains", values):
            return {"op": "contains", "field": f.name, "value": _value_json(values[0])}
        case Contains(f, op, values):
            return {"op": op, "field": f.name, "values": [_value_json(v) for v in values]}
        case StringMatch(f, op, pattern):
            return {"op": op, "field": f.name, "value": pattern.value}
        case IsNull(f, negated):
            return {"op": "is_not_null" if negated else "is_null", "field": f.name}
        case Within(f, days):
            return {"op": "within", "field": f.name, "days": days}
        case Count(event, where, days, op, value):
            out: dict[str, Any] = {"op": "count", "event": event}
            if where is not None:
                out["where"] = _node_json(where)
            out.update({"days": days, "cmp": op, "value": value})
            return out
        case Persona(key):
            return {"op": "persona", "key": key}
    raise TypeError(f"not a criteria node: {node!r}")  # pragma: no cover


def _nodes_json(nodes: tuple[Node, ...]) -> list[dict[str, Any]]:
    return [_node_json(n) for n in nodes]


def from_json(doc: Any) -> Node:
    """Read a versioned JSON document (as produced by `to_json`), validating its shape.

    Raises CriteriaError whose `path` points at the offending part, e.g.
    `$.expr.args[1].value`.
    """
    if not isinstance(doc, Mapping):
        raise CriteriaError("expected an object with 'version' and 'expr'", path="$")
    _keys(doc, "$", required=("version", "expr"))
    version = doc["version"]
    if version != JSON_VERSION or isinstance(version, bool):
        raise CriteriaError(
            f"unsupported version {version!r}: this build reads version {JSON_VERSION}",
            path="$.version",
        )
    return _read_node(doc["expr"], "$.expr", 1)


_FIELD_KEYS: dict[str, tuple[str, ...]] = {
    **{op: ("field", "value") for op in COMPARE_OPS},
    "between": ("field", "low", "high"),
    "in": ("field", "values"),
    "not_in": ("field", "values"),
    "contains": ("field", "value"),
    "contains_any": ("field", "values"),
    "contains_all": ("field", "values"),
    **{op: ("field", "value") for op in STRING_MATCH_OPS},
    "is_null": ("field",),
    "is_not_null": ("field",),
    "within": ("field", "days"),
}
_ALL_OPS = ("and", "or", "not", *_FIELD_KEYS, "count", "persona")


def _keys(
    obj: Mapping[str, Any], path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    for key in required:
        if key not in obj:
            raise CriteriaError(f"missing key {key!r}", path=path)
    for key in obj:
        if key not in required and key not in optional:
            raise CriteriaError(f"unknown key {key!r}", path=path)


def _read_node(obj: Any, path: str, depth: int) -> Node:
    if depth > MAX_DEPTH + 1:  # stop before recursing on; the checker names the exact node
        raise CriteriaError(f"the criterion nests more than {MAX_DEPTH} levels deep", path=path)
    if not isinstance(obj, Mapping):
        raise CriteriaError("expected an object with an 'op'", path=path)
    op = obj.get("op")
    if not isinstance(op, str) or op not in _ALL_OPS:
        raise CriteriaError(
            f"unknown op {op!r}: expected one of {', '.join(_ALL_OPS)}", path=f"{path}.op"
        )
    if op in ("and", "or"):
        _keys(obj, path, ("op", "args"))
        items = obj["args"]
        if not isinstance(items, list) or len(items) < 2:
            raise CriteriaError(f"'{op}' needs a list of at least 2 args", path=f"{path}.args")
        args = tuple(_read_node(a, f"{path}.args[{i}]", depth + 1) for i, a in enumerate(items))
        return And(args) if op == "and" else Or(args)
    if op == "not":
        _keys(obj, path, ("op", "arg"))
        return Not(_read_node(obj["arg"], f"{path}.arg", depth + 1))
    if op == "persona":
        _keys(obj, path, ("op", "key"))
        key = obj["key"]
        if not isinstance(key, str) or not key:
            raise CriteriaError("persona key must be a non-empty string", path=f"{path}.key")
        return Persona(key)
    if op == "count":
        return _read_count(obj, path, depth)
    _keys(obj, path, ("op", *_FIELD_KEYS[op]))
    f = _read_field(obj["field"], f"{path}.field")
    if op in COMPARE_OPS:
        return Compare(f, op, _read_value(obj["value"], f"{path}.value"))
    if op == "between":
        low = _read_value(obj["low"], f"{path}.low")
        return Between(f, low, _read_value(obj["high"], f"{path}.high"))
    if op in ("in", "not_in"):
        return In(f, _read_values(obj["values"], f"{path}.values"), negated=op == "not_in")
    if op == "contains":
        return Contains(f, op, (_read_value(obj["value"], f"{path}.value"),))
    if op in CONTAINS_OPS:
        return Contains(f, op, _read_values(obj["values"], f"{path}.values"))
    if op in STRING_MATCH_OPS:
        pattern = obj["value"]
        if not isinstance(pattern, str):
            raise CriteriaError(f"'{op}' needs a string value", path=f"{path}.value")
        return StringMatch(f, op, String(pattern))
    if op in ("is_null", "is_not_null"):
        return IsNull(f, negated=op == "is_not_null")
    return Within(f, _read_days(obj["days"], f"{path}.days"))


def _read_count(obj: Mapping[str, Any], path: str, depth: int) -> Count:
    _keys(obj, path, ("op", "event", "days", "cmp", "value"), optional=("where",))
    event = obj["event"]
    if event not in EVENTS:
        raise CriteriaError(f"event must be 'read' or 'login', not {event!r}", path=f"{path}.event")
    where = None
    if "where" in obj and obj["where"] is not None:
        where = _read_node(obj["where"], f"{path}.where", depth + 1)
    days = _read_days(obj["days"], f"{path}.days")
    cmp = obj["cmp"]
    if cmp not in COMPARE_OPS:
        raise CriteriaError(
            f"cmp must be one of {' '.join(COMPARE_OPS)}, not {cmp!r}", path=f"{path}.cmp"
        )
    value = obj["value"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CriteriaError("value must be a whole number >= 0", path=f"{path}.value")
    return Count(str(event), where, days, str(cmp), value)


def _read_days(days: Any, path: str) -> int:
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
        raise CriteriaError(f"days must be a whole number from 1 to {MAX_DAYS}", path=path)
    return days


def _read_field(name: Any, path: str) -> Field:
    if not isinstance(name, str) or not is_valid_field_name(name):
        raise CriteriaError(
            f"field must be a name (letters, digits, _) that is not a keyword, not {name!r}",
            path=path,
        )
    return Field(name)


def _read_values(items: Any, path: str) -> tuple[Value, ...]:
    if not isinstance(items, list) or not items:
        raise CriteriaError("expected a non-empty list of values", path=path)
    return tuple(_read_value(v, f"{path}[{i}]") for i, v in enumerate(items))


def _read_value(obj: Any, path: str) -> Value:
    if isinstance(obj, bool):
        return Boolean(obj)
    if isinstance(obj, str):
        return String(obj)
    if isinstance(obj, int | float):
        if not math.isfinite(obj):
            raise CriteriaError("numbers must be finite", path=path)
        return Number(obj)
    if isinstance(obj, Mapping) and obj.get("type") == "timestamp":
        _keys(obj, path, ("type", "value"))
        text = obj["value"]
        if isinstance(text, str):
            try:
                return Timestamp(parse_timestamp(text))
            except ValueError:
                pass
        raise CriteriaError(
            f"invalid timestamp {text!r}: expected ISO-8601 like '2026-06-30T12:00:00Z'",
            path=f"{path}.value",
        )
    if obj is None:
        raise CriteriaError("null is not a value: use the 'is_null' op", path=path)
    raise CriteriaError(
        'expected a string, number, boolean or {"type": "timestamp", "value": ...}', path=path
    )
