"""The checker: names and types against a catalog, with positions; references."""

from __future__ import annotations

import pytest

from personatag.criteria import CriteriaError, check, from_json, parse, references
from personatag.criteria.check import References

from .support import CATALOG

CHECK_ERRORS = [
    # unknown names, with a did-you-mean
    ('regoin = "EMEA"', "line 1, col 1: unknown field 'regoin' (did you mean 'region'?)"),
    ('Region = "EMEA"', "line 1, col 1: unknown field 'Region' (did you mean 'region'?)"),
    ("x = 1", "line 1, col 1: unknown field 'x'"),
    (
        'region = "EMEA" and jobtitle ilike "%cio%"',
        "line 1, col 21: unknown field 'jobtitle' (did you mean 'job_title'?)",
    ),
    ('persona("ci")', "line 1, col 1: unknown persona 'ci' (did you mean 'cio'?)"),
    (
        'persona("emea_macro")',
        "line 1, col 1: unknown persona 'emea_macro' (did you mean 'emea-macro'?)",
    ),
    ('persona("zzz")', "line 1, col 1: unknown persona 'zzz' (it does not exist or is archived)"),
    # types of values
    (
        'seniority = "x"',
        'line 1, col 13: type mismatch: seniority is an int field, but "x" is a string',
    ),
    (
        'seniority = "3"',
        'line 1, col 13: type mismatch: seniority is an int field, but "3" is '
        "a string (write 3 without quotes)",
    ),
    (
        "region > 5",
        "line 1, col 10: type mismatch: region is a string field, but 5 is a number "
        '(write "5" for text)',
    ),
    ("vip = 1", "line 1, col 7: type mismatch: vip is a bool field, but 1 is a number"),
    (
        'vip = "true"',
        'line 1, col 7: type mismatch: vip is a bool field, but "true" is a string '
        "(write true without quotes)",
    ),
    (
        'created_at > "2026-01-01"',
        "line 1, col 14: type mismatch: created_at is a timestamp "
        'field, but "2026-01-01" is a string (write date("2026-01-01"))',
    ),
    (
        "created_at > 5",
        "line 1, col 14: type mismatch: created_at is a timestamp field, but 5 is a number",
    ),
    (
        'score between 1 and "2"',
        'line 1, col 21: type mismatch: score is a float field, but "2" '
        "is a string (write 2 without quotes)",
    ),
    (
        'country in ("GB", 4)',
        "line 1, col 19: type mismatch: country is a string field, but 4 "
        'is a number (write "4" for text)',
    ),
    (
        "interests contains 5",
        "line 1, col 20: type mismatch: interests holds strings, but 5 is a number",
    ),
    # operators that do not apply to the field's type
    (
        'seniority like "1%"',
        "line 1, col 1: 'like' needs a string field, but seniority is an int field",
    ),
    ('vip ilike "t%"', "line 1, col 1: 'ilike' needs a string field, but vip is a bool field"),
    (
        'tags starts_with "a"',
        "line 1, col 1: 'starts_with' needs a string field, but tags is a list field",
    ),
    (
        "region within 30d",
        "line 1, col 1: 'within' needs a timestamp field, but region is a string field",
    ),
    (
        'region contains "x"',
        "line 1, col 1: 'contains' needs a list field, but region is a string field (use = or in)",
    ),
    (
        'seniority contains_any ("x")',
        "line 1, col 1: 'contains_any' needs a list field, but "
        "seniority is an int field (use = or in)",
    ),
    (
        'interests = "rates"',
        "line 1, col 1: interests is a list field: use contains, "
        "contains_any or contains_all instead of '='",
    ),
    (
        'interests not in ("rates")',
        "line 1, col 1: interests is a list field: use contains, "
        "contains_any or contains_all instead of 'not in'",
    ),
    (
        'interests between "a" and "b"',
        "line 1, col 1: interests is a list field: use contains, "
        "contains_any or contains_all instead of 'between'",
    ),
    ("vip < true", "line 1, col 1: '<' does not apply to the bool field vip: use =, != or in"),
    (
        "vip between false and true",
        "line 1, col 1: 'between' does not apply to the bool field vip: use =, != or in",
    ),
    # count(...)
    (
        'count(login where sector = "x", 30d) > 1',
        "line 1, col 19: count(login ...) cannot have "
        "a 'where': logins have no fields (use count(read where ...) to filter by publication)",
    ),
    (
        'count(read where sectr = "x", 30d) > 1',
        "line 1, col 18: unknown publication field 'sectr' (did you mean 'sector'?)",
    ),
    (
        'count(read where job_title = "x", 30d) > 1',
        "line 1, col 18: 'job_title' is a contact "
        "field; inside count(read where ...) names are publication fields: asset_class, id, "
        "published_at, region, sector, series, title",
    ),
    (
        'count(read where published_at = "x", 30d) > 1',
        'line 1, col 33: type mismatch: published_at is a timestamp field, but "x" is a string',
    ),
    (
        'count(read where persona("cio"), 30d) > 1',
        "line 1, col 18: persona(...) cannot be used inside count(read where ...)",
    ),
    (
        "count(read where count(login, 3d) > 1, 30d) > 1",
        "line 1, col 18: count(...) cannot be used inside count(read where ...)",
    ),
    # numbers bound as BIGINT
    (
        "seniority = 99999999999999999999",
        "line 1, col 13: number 99999999999999999999 is out "
        "of range: whole numbers must lie within +/-9223372036854775807",
    ),
    (
        "count(login, 3d) > 99999999999999999999",
        "line 1, col 1: count(...) compares with a whole number up to 9223372036854775807",
    ),
    # positions on later lines
    (
        'region = "EMEA"\n  and seniority = "high"',
        'line 2, col 19: type mismatch: seniority is an int field, but "high" is a string',
    ),
]


@pytest.mark.parametrize(("text", "message"), CHECK_ERRORS, ids=[e[0] for e in CHECK_ERRORS])
def test_check_errors(text: str, message: str) -> None:
    node = parse(text)
    with pytest.raises(CriteriaError) as info:
        check(node, CATALOG)
    assert str(info.value) == message
    assert info.value.path is None


VALID = [
    'region = "EMEA"',
    "seniority = 3.0",
    "score > 1",
    "score in (1, 2.5)",
    "vip != false",
    "vip in (true)",
    'interests contains_all ("rates")',
    'tags contains_any ("a", "b")',
    'renewal_at within 30d and created_at between date("2026-01-01") and date("2026-02-01")',
    'desk ilike "%rates%"',
    "interests is null and vip is not null",
    'count(read where published_at within 30d and title like "%Outlook%", 90d) >= 2',
    "count(login, 1d) = 0",
    'persona("nobody") or persona("rates-trader")',
]


@pytest.mark.parametrize("text", VALID)
def test_valid_criteria_pass(text: str) -> None:
    check(parse(text), CATALOG)


def test_persona_check_can_be_skipped() -> None:
    check(parse('persona("not-there")'), CATALOG, personas=False)


def test_errors_in_json_documents_carry_a_path() -> None:
    doc = {
        "version": 1,
        "expr": {
            "op": "and",
            "args": [
                {"op": "=", "field": "region", "value": "EMEA"},
                {"op": ">", "field": "seniority", "value": "high"},
            ],
        },
    }
    with pytest.raises(CriteriaError) as info:
        check(from_json(doc), CATALOG)
    assert str(info.value) == (
        '$.expr.args[1].value: type mismatch: seniority is an int field, but "high" is a string'
    )
    assert info.value.line is None and info.value.col is None


def test_references() -> None:
    node = parse(
        'region = "EMEA" and (job_title ilike "%cio%" or interests contains "rates") '
        'and count(read where sector = "Banks", 30d) > 1 and not persona("cio") '
        "and count(login, 7d) >= 1"
    )
    assert references(node) == References(
        contact_fields=frozenset({"region", "job_title", "interests"}),
        publication_fields=frozenset({"sector"}),
        events=frozenset({"read", "login"}),
        personas=frozenset({"cio"}),
        time_windows=True,
    )


def test_references_without_windows() -> None:
    refs = references(parse('region = "EMEA" or last_login_at is null'))
    assert refs.contact_fields == {"region", "last_login_at"}
    assert not refs.events and not refs.personas and not refs.time_windows
    assert references(parse("last_login_at within 30d")).time_windows
