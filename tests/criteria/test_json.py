"""The versioned JSON document: shape, and precise errors with JSON paths."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from personatag.criteria import CriteriaError, from_json, parse, to_json
from personatag.criteria.ast import Compare, Field, Timestamp


def doc(expr: Any) -> dict[str, Any]:
    return {"version": 1, "expr": expr}


def test_document_shape() -> None:
    assert to_json(parse('created_at >= date("2026-06-30T08:30:00Z")')) == doc(
        {
            "op": ">=",
            "field": "created_at",
            "value": {"type": "timestamp", "value": "2026-06-30T08:30:00Z"},
        }
    )
    assert to_json(parse("count(login, 7d) > 0")) == doc(
        {"op": "count", "event": "login", "days": 7, "cmp": ">", "value": 0}
    )


def test_timestamps_accept_any_iso_offset() -> None:
    node = from_json(
        doc(
            {
                "op": "=",
                "field": "d",
                "value": {"type": "timestamp", "value": "2026-06-30T10:00:00+02:00"},
            }
        )
    )
    assert node == Compare(Field("d"), "=", Timestamp(datetime(2026, 6, 30, 8, tzinfo=UTC)))


def test_count_where_may_be_null() -> None:
    node = from_json(
        doc({"op": "count", "event": "read", "where": None, "days": 3, "cmp": "=", "value": 0})
    )
    assert node == parse("count(read, 3d) = 0")


JSON_ERRORS = [
    ([], "$: expected an object with 'version' and 'expr'"),
    ({"expr": {}}, "$: missing key 'version'"),
    ({"version": 2, "expr": {}}, "$.version: unsupported version 2: this build reads version 1"),
    ({"version": 1, "expr": {}, "x": 1}, "$: unknown key 'x'"),
    (doc("region"), "$.expr: expected an object with an 'op'"),
    (
        doc({"op": "~"}),
        "$.expr.op: unknown op '~': expected one of and, or, not, =, !=, <, <=, >, >=, between, "
        "in, not_in, contains, contains_any, contains_all, starts_with, ends_with, like, ilike, "
        "is_null, is_not_null, within, count, persona",
    ),
    (
        doc({"op": "and", "args": [{"op": "persona", "key": "a"}]}),
        "$.expr.args: 'and' needs a list of at least 2 args",
    ),
    (
        doc({"op": "or", "args": [{"op": "persona", "key": "a"}, {"op": "=", "field": "x"}]}),
        "$.expr.args[1]: missing key 'value'",
    ),
    (doc({"op": "=", "field": "x", "value": 1, "extra": 2}), "$.expr: unknown key 'extra'"),
    (
        doc({"op": "=", "field": "and", "value": 1}),
        "$.expr.field: field must be a name (letters, digits, _) that is not a keyword, not 'and'",
    ),
    (
        doc({"op": "=", "field": "a b", "value": 1}),
        "$.expr.field: field must be a name (letters, digits, _) that is not a keyword, not 'a b'",
    ),
    (
        doc({"op": "=", "field": "x", "value": None}),
        "$.expr.value: null is not a value: use the 'is_null' op",
    ),
    (
        doc({"op": "=", "field": "x", "value": [1]}),
        '$.expr.value: expected a string, number, boolean or {"type": "timestamp", "value": ...}',
    ),
    (
        doc({"op": "=", "field": "x", "value": {"type": "timestamp", "value": "soon"}}),
        "$.expr.value.value: invalid timestamp 'soon': expected ISO-8601 like "
        "'2026-06-30T12:00:00Z'",
    ),
    (doc({"op": "=", "field": "x", "value": float("inf")}), "$.expr.value: numbers must be finite"),
    (
        doc({"op": "in", "field": "x", "values": []}),
        "$.expr.values: expected a non-empty list of values",
    ),
    (
        doc({"op": "in", "field": "x", "values": ["a", None]}),
        "$.expr.values[1]: null is not a value: use the 'is_null' op",
    ),
    (doc({"op": "like", "field": "x", "value": 5}), "$.expr.value: 'like' needs a string value"),
    (
        doc({"op": "within", "field": "x", "days": 0}),
        "$.expr.days: days must be a whole number from 1 to 100000",
    ),
    (
        doc({"op": "within", "field": "x", "days": True}),
        "$.expr.days: days must be a whole number from 1 to 100000",
    ),
    (
        doc({"op": "count", "event": "view", "days": 3, "cmp": "=", "value": 0}),
        "$.expr.event: event must be 'read' or 'login', not 'view'",
    ),
    (
        doc({"op": "count", "event": "read", "days": 3, "cmp": "==", "value": 0}),
        "$.expr.cmp: cmp must be one of = != < <= > >=, not '=='",
    ),
    (
        doc({"op": "count", "event": "read", "days": 3, "cmp": "=", "value": -1}),
        "$.expr.value: value must be a whole number >= 0",
    ),
    (
        doc(
            {
                "op": "count",
                "event": "read",
                "where": {"op": "not", "arg": {"op": "persona"}},
                "days": 3,
                "cmp": "=",
                "value": 0,
            }
        ),
        "$.expr.where.arg: missing key 'key'",
    ),
    (doc({"op": "persona", "key": ""}), "$.expr.key: persona key must be a non-empty string"),
]


@pytest.mark.parametrize(("document", "message"), JSON_ERRORS, ids=[m for _, m in JSON_ERRORS])
def test_json_errors(document: Any, message: str) -> None:
    with pytest.raises(CriteriaError) as info:
        from_json(document)
    assert str(info.value) == message
    assert info.value.path == message.split(":")[0]
