"""AST -> canonical criterion text, with the fewest parentheses that keep the tree.

`parse(to_text(node)) == node` for every valid node, and `to_text(parse(text))`
is a fixed point.
"""

from __future__ import annotations

from personatag.criteria.ast import (
    And,
    Between,
    Boolean,
    Compare,
    Contains,
    Count,
    In,
    IsNull,
    Node,
    Not,
    Number,
    Or,
    Persona,
    String,
    StringMatch,
    Timestamp,
    Value,
    Within,
    format_timestamp,
)


def to_text(node: Node) -> str:
    """The canonical text of `node`."""
    match node:
        case Or(args):
            # `a or (b or c)` must keep its parentheses: the parser flattens chains.
            return " or ".join(_wrap(a, Or) for a in args)
        case And(args):
            return " and ".join(_wrap(a, (And, Or)) for a in args)
        case Not(arg):
            return "not " + _wrap(arg, (And, Or))
        case Compare(f, op, value):
            return f"{f.name} {op} {value_text(value)}"
        case Between(f, low, high):
            return f"{f.name} between {value_text(low)} and {value_text(high)}"
        case In(f, values, negated):
            return f"{f.name} {'not in' if negated else 'in'} {_list(values)}"
        case Contains(f, "contains", values):
            return f"{f.name} contains {value_text(values[0])}"
        case Contains(f, op, values):
            return f"{f.name} {op} {_list(values)}"
        case StringMatch(f, op, pattern):
            return f"{f.name} {op} {value_text(pattern)}"
        case IsNull(f, negated):
            return f"{f.name} is {'not ' if negated else ''}null"
        case Within(f, days):
            return f"{f.name} within {days}d"
        case Count(event, where, days, op, value):
            cond = "" if where is None else " where " + to_text(where)
            return f"count({event}{cond}, {days}d) {op} {value}"
        case Persona(key):
            return f"persona({quote(key)})"
    raise TypeError(f"not a criteria node: {node!r}")  # pragma: no cover


def _wrap(node: Node, kinds: type | tuple[type, ...]) -> str:
    text = to_text(node)
    return f"({text})" if isinstance(node, kinds) else text


def _list(values: tuple[Value, ...]) -> str:
    return "(" + ", ".join(value_text(v) for v in values) + ")"


def quote(text: str) -> str:
    """A string literal: double quotes, with backslash and quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def value_text(value: Value) -> str:
    match value:
        case String(s):
            return quote(s)
        case Boolean(b):
            return "true" if b else "false"
        case Number(n):
            return repr(n)
        case Timestamp(t):
            return f"date({quote(format_timestamp(t))})"
    raise TypeError(f"not a value: {value!r}")  # pragma: no cover
