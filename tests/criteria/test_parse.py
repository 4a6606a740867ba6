"""Parser and printer: tree shapes, syntax errors with positions, round trips."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personatag.criteria import CriteriaError, from_json, parse, to_json, to_text
from personatag.criteria.ast import (
    And,
    Between,
    Boolean,
    Compare,
    Contains,
    Count,
    Field,
    In,
    IsNull,
    Not,
    Number,
    Or,
    Persona,
    Pos,
    String,
    StringMatch,
    Timestamp,
    Within,
)

from .support import ALPHABET, criteria

ROUND_TRIP = settings(max_examples=500, derandomize=True, deadline=None, database=None)


def cmp(name: str, op: str, value: object) -> Compare:
    v = String(value) if isinstance(value, str) else Number(value)  # type: ignore[arg-type]
    return Compare(Field(name), op, v)


def test_precedence_not_binds_tighter_than_and_than_or() -> None:
    node = parse("a = 1 or b = 2 and not c = 3")
    assert node == Or((cmp("a", "=", 1), And((cmp("b", "=", 2), Not(cmp("c", "=", 3))))))


def test_chains_are_n_ary_and_parentheses_nest() -> None:
    assert parse("a = 1 and b = 2 and c = 3") == And(
        (cmp("a", "=", 1), cmp("b", "=", 2), cmp("c", "=", 3))
    )
    assert parse("a = 1 and (b = 2 and c = 3)") == And(
        (cmp("a", "=", 1), And((cmp("b", "=", 2), cmp("c", "=", 3))))
    )


def test_between_and_is_not_a_conjunction() -> None:
    node = parse('seniority between 1 and 3 and region = "EMEA"')
    assert node == And(
        (Between(Field("seniority"), Number(1), Number(3)), cmp("region", "=", "EMEA"))
    )


def test_every_predicate_form() -> None:
    assert parse('c not in ("a", "b")') == In(Field("c"), (String("a"), String("b")), True)
    assert parse("x in (1, 2.5, -3)") == In(Field("x"), (Number(1), Number(2.5), Number(-3)))
    assert parse('t contains "a"') == Contains(Field("t"), "contains", (String("a"),))
    assert parse('t contains_all ("a")') == Contains(Field("t"), "contains_all", (String("a"),))
    assert parse('e ends_with "%"') == StringMatch(Field("e"), "ends_with", String("%"))
    assert parse("x is not null") == IsNull(Field("x"), True)
    assert parse("x within 90d") == Within(Field("x"), 90)
    assert parse("x within 90 d") == Within(Field("x"), 90)
    assert parse("v = false") == Compare(Field("v"), "=", Boolean(False))
    assert parse("count(login, 7d) >= 2") == Count("login", None, 7, ">=", 2)
    assert parse('count(read where s = "x", 30d) = 0') == Count(
        "read", cmp("s", "=", "x"), 30, "=", 0
    )
    assert parse('persona("cio")') == Persona("cio")


def test_dates_are_utc_instants() -> None:
    node = parse('d = date("2026-06-30")')
    assert node == Compare(Field("d"), "=", Timestamp(datetime(2026, 6, 30, tzinfo=UTC)))
    node = parse('d = date("2026-06-30T14:00:00+02:00")')
    assert node == Compare(Field("d"), "=", Timestamp(datetime(2026, 6, 30, 12, tzinfo=UTC)))
    assert to_text(node) == 'd = date("2026-06-30T12:00:00Z")'


def test_string_escapes() -> None:
    node = parse(r'x = "say \"hi\" \\ bye"')
    assert node == cmp("x", "=", 'say "hi" \\ bye')
    assert to_text(node) == r'x = "say \"hi\" \\ bye"'


def test_positions_are_recorded_but_ignored_by_equality() -> None:
    node = parse('region = "EMEA" and\n  seniority > 3')
    assert isinstance(node, And)
    second = node.args[1]
    assert isinstance(second, Compare)
    assert second.pos == Pos(2, 3)
    assert second.value.pos == Pos(2, 15)
    assert second == Compare(Field("seniority"), ">", Number(3))


SYNTAX_ERRORS = [
    ("", 'line 1, col 1: empty criterion: write a condition such as region = "EMEA"'),
    (
        "region = null",
        "line 1, col 8: use 'region is null' instead of 'region = null' "
        "(a comparison with null is never true)",
    ),
    (
        "region != null",
        "line 1, col 8: use 'region is not null' instead of 'region != null' "
        "(a comparison with null is never true)",
    ),
    (
        'country in ("GB", null)',
        "line 1, col 19: null is not a value: test for a missing value with 'is null'",
    ),
    (
        '"EMEA" = region',
        'line 1, col 1: a condition starts with a field name, not with the value "EMEA" '
        '(write field = value, e.g. region = "EMEA")',
    ),
    (
        "last_login_at within 90",
        "line 1, col 22: missing 'd' after 90: windows are in days, write 90d",
    ),
    (
        "count(read, 30) > 1",
        "line 1, col 13: missing 'd' after 30: windows are in days, write 30d",
    ),
    ("x within 0d", "line 1, col 10: a window must be from 1 to 100000 days"),
    (
        "x within 2.5d",
        "line 1, col 10: expected a whole number of days after 'within' (e.g. 90d), found '2.5'",
    ),
    (
        'region = "EMEA" AND seniority > 3',
        "line 1, col 17: keywords are lower case: write 'and', not 'AND'",
    ),
    ("x Is NULL", "line 1, col 3: keywords are lower case: write 'is', not 'Is'"),
    ("count(READ, 3d) > 1", "line 1, col 7: keywords are lower case: write 'read', not 'READ'"),
    ('region = "EMEA', 'line 1, col 10: unterminated string: add the closing "'),
    (
        'x = "a\\n"',
        "line 1, col 7: unknown escape '\\n' in a string: only \\\" and \\\\ are allowed",
    ),
    ('x = "abc\\', 'line 1, col 5: unterminated string: add the closing "'),
    ("x = 1e999", "line 1, col 5: number 1e999 is too large"),
    ("x = 'a'", "line 1, col 5: strings use double quotes: write \"text\", not 'text'"),
    ("x == 1", "line 1, col 3: use '=' to compare, not '=='"),
    ("x = 1 # comment", "line 1, col 7: unexpected character '#'"),
    ("x in ()", "line 1, col 6: empty list after 'in': give at least one value"),
    (
        "t contains_any ()",
        "line 1, col 16: empty list after 'contains_any': give at least one value",
    ),
    (
        'x in "a"',
        'line 1, col 6: expected \'(\' after \'in\', found the string "a" (write in ("a", "b"))',
    ),
    ('x in ("a" "b")', "line 1, col 11: expected ',' or ')' in the list, found the string \"b\""),
    (
        'region = "EMEA" seniority > 3',
        "line 1, col 17: unexpected 'seniority' after a "
        "complete condition (missing 'and' or 'or'?)",
    ),
    ("x = 1)", "line 1, col 6: unexpected ')' after a complete condition (no '(' to close)"),
    ("(x = 1", "line 1, col 7: expected ')' to close the '(' at line 1, col 1, found end of input"),
    (
        "x = 1 and",
        'line 1, col 10: expected a condition such as region = "EMEA", found end of input',
    ),
    (
        "x = EMEA",
        "line 1, col 5: expected a value, found the name 'EMEA' (strings need "
        'double quotes: "EMEA")',
    ),
    (
        "x =",
        'line 1, col 4: expected a value (a "string", a number, true, false or '
        'date("...")), found end of input',
    ),
    (
        "x",
        "line 1, col 2: expected an operator after 'x' (=, !=, <, <=, >, >=, between, in, "
        "not in, contains, contains_any, contains_all, starts_with, ends_with, like, ilike, "
        "is null, within), found end of input",
    ),
    (
        "x not = 1",
        "line 1, col 7: expected 'in' after 'x not', found '=' (to negate a "
        "condition, write 'not' before it)",
    ),
    ("x is empty", "line 1, col 6: expected 'null' after 'is', found 'empty'"),
    ("x between 1 or 2", "line 1, col 13: expected 'and' in 'x between LOW and HIGH', found 'or'"),
    ("x like 5", "line 1, col 8: 'like' needs a \"string\", found '5'"),
    (
        'x = date("yesterday")',
        'line 1, col 10: invalid date "yesterday": expected ISO-8601 '
        'like "2026-06-30" or "2026-06-30T12:00:00Z"',
    ),
    (
        "x = date(5)",
        "line 1, col 10: date(...) needs a string like date(\"2026-06-30\"), found '5'",
    ),
    (
        "count(reads, 3d) > 1",
        "line 1, col 7: expected 'read' or 'login' after 'count(', found 'reads'",
    ),
    (
        "count(read 3d) > 1",
        "line 1, col 12: expected ',' and a window in count(read, 90d), found '3'",
    ),
    (
        "count(read, 3d)",
        "line 1, col 16: expected a comparison after count(...) such as '>= 3', found end of input",
    ),
    (
        "count(read, 3d) > 1.5",
        "line 1, col 19: count(...) compares with a whole number >= 0, found '1.5'",
    ),
    (
        "persona(cio)",
        "line 1, col 9: persona(...) needs a string key like persona(\"cio\"), found 'cio'",
    ),
    ("x = 1 and\n\n   y ! 2", "line 3, col 6: unexpected character '!'"),
    (
        'x = "multi\nline" and y',
        "line 2, col 12: expected an operator after 'y' (=, !=, <, "
        "<=, >, >=, between, in, not in, contains, contains_any, contains_all, starts_with, "
        "ends_with, like, ilike, is null, within), found end of input",
    ),
]


@pytest.mark.parametrize(("text", "message"), SYNTAX_ERRORS, ids=[e[0] for e in SYNTAX_ERRORS])
def test_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(CriteriaError) as info:
        parse(text)
    assert str(info.value) == message
    assert (info.value.line, info.value.col) == tuple(
        int(n) for n in message.split(":")[0].replace("line ", "").split(", col ")
    )


def test_error_excerpt_points_at_the_column() -> None:
    text = 'region = "EMEA" AND x = 1'
    with pytest.raises(CriteriaError) as info:
        parse(text)
    assert info.value.excerpt(text).splitlines()[1:] == [f"  {text}", "  " + " " * 16 + "^"]


def test_text_is_a_view_of_the_tree() -> None:
    assert to_text(parse("((a = 1))  and(b=2)")) == "a = 1 and b = 2"
    assert to_text(parse("not(a = 1)")) == "not a = 1"
    assert to_text(parse("not (a = 1 and b = 2)")) == "not (a = 1 and b = 2)"
    assert to_text(parse("x in (1.0, 2)")) == "x in (1.0, 2)"


@ROUND_TRIP
@given(node=criteria())
def test_round_trip_text(node: object) -> None:
    text = to_text(node)  # type: ignore[arg-type]
    again = parse(text)
    assert again == node
    assert to_text(again) == text


@ROUND_TRIP
@given(node=criteria())
def test_round_trip_json(node: object) -> None:
    doc = json.loads(json.dumps(to_json(node)))  # type: ignore[arg-type]
    assert from_json(doc) == node


TOKENS = [
    *ALPHABET,
    *'()",=<>!-. \n',
    *("and ", "or ", "not ", "in ", "is ", "null", "x ", "count", "read", "d", "90"),
    *("date", '("a")', "between ", "contains_any "),
]


@settings(max_examples=500, derandomize=True, deadline=None, database=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=20).map("".join) | st.text(max_size=30))
def test_any_text_parses_or_raises_a_positioned_error(text: str) -> None:
    try:
        node = parse(text)
    except CriteriaError as exc:
        assert exc.line is not None and exc.col is not None
        assert exc.line in range(1, text.count("\n") + 2)
    else:
        assert parse(to_text(node)) == node
