"""The JSON lines of the flink stream engine, and the job's logic without a cluster."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import sqlite

from personatag.criteria import compile_criterion, compile_python, parse
from personatag.criteria.to_python import EvalInput
from personatag.domain import Catalog, FieldType
from personatag.engines.flink import codec
from personatag.engines.flink.programs.stream_job import (
    ACTIVE,
    _DictState,
    absorb_rule,
    evaluate_work,
)
from personatag.engines.local.stream import ongoing
from personatag.store.types import NotAString, StringList

AS_OF = datetime(2026, 6, 30, 12, 0, 0, 123456, tzinfo=UTC)


def _same(a: EvalInput, b: EvalInput) -> bool:
    return (
        dict(a.contact) == dict(b.contact)
        and [(dict(p), t) for p, t in a.reads] == [(dict(p), t) for p, t in b.reads]
        and list(a.logins) == list(b.logins)
        and a.personas == b.personas
        and a.as_of == b.as_of
    )


def _round_trip(inp: EvalInput) -> EvalInput:
    line = json.dumps(codec.encode_input(inp), ensure_ascii=True)
    assert "\n" not in line and line.isascii()
    return codec.decode_input(json.loads(line))


def test_every_field_type_survives_exactly() -> None:
    pub = {"id": "p1", "sector": "Energy", "published_at": AS_OF - timedelta(days=3), "x": None}
    inp = EvalInput(
        contact={
            "id": "c1",
            "job_title": 'Chief "Investment"\nOfficer \u2028 İstanbul \U0001f600',
            "seniority": 2**62,
            "score": 0.1 + 0.2,
            "ratio": -0.0,
            "flag": True,
            "off": False,
            "interests": ["Energy", "", "a;b"],
            "empty": [],
            "missing": None,
            "created_at": datetime(1900, 1, 1, tzinfo=UTC),
            "updated_at": datetime(8999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            "last_login_at": datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        },
        reads=[(pub, AS_OF - timedelta(microseconds=1)), (pub, AS_OF - timedelta(days=1))],
        logins=[AS_OF, AS_OF - timedelta(days=400, microseconds=7)],
        personas=frozenset({"a", "b.c"}),
        as_of=AS_OF,
    )
    back = _round_trip(inp)
    assert _same(inp, back)
    c = back.contact
    assert c["seniority"] == 2**62 and isinstance(c["seniority"], int)
    assert c["flag"] is True and c["off"] is False
    assert math.copysign(1.0, c["ratio"]) == -1.0
    assert c["empty"] == [] and c["missing"] is None  # an empty list is not NULL
    assert c["updated_at"].microsecond == 999999 and c["updated_at"].tzinfo is not None
    # One publication read twice is written once.
    assert len(codec.encode_input(inp)["pubs"]) == 1


def test_stored_values_that_are_not_lists_or_strings_keep_what_they_are() -> None:
    """A list that is not an array (NotAList) stays UNKNOWN to `contains`, and
    an item that is not a string (NotAString) equal to no string, on the
    job's side as on the embedded one: as plain strings, `contains "1"`
    matched [1, 2] on the Flink stream engine only."""
    interests = StringList().process_result_value('[1, "Credit", true]', sqlite.dialect())
    tags = StringList().process_result_value("hello", sqlite.dialect())
    inp = EvalInput(contact={"interests": interests, "tags": tags}, as_of=AS_OF)
    back = _round_trip(inp)
    assert [type(x) for x in back.contact["interests"]] == [NotAString, str, NotAString]
    assert [str(x) for x in back.contact["interests"]] == ["1", "Credit", "True"]
    catalog = Catalog(contact_fields={"interests": FieldType.LIST, "tags": FieldType.LIST})
    for text in ['interests contains "1"', 'interests contains "Credit"', 'tags contains "h"']:
        check = compile_python(parse(text), catalog)
        assert check(back) == check(inp), text
    assert compile_python(parse('interests contains "1"'), catalog)(back) is False
    assert compile_python(parse('tags contains "h"'), catalog)(back) is None
    with pytest.raises(codec.CodecError):
        codec.decode_fields({"interests": [{"x": "1"}]})


def test_other_zones_and_naive_times_come_back_as_the_same_utc_instant() -> None:
    plus2 = timezone(timedelta(hours=2))
    at = datetime(2026, 3, 29, 3, 30, 0, 5, tzinfo=plus2)
    back = _round_trip(EvalInput(contact={"created_at": at}, as_of=AS_OF))
    assert back.contact["created_at"] == at
    assert back.contact["created_at"].utcoffset() == timedelta(0)
    naive = datetime(2026, 1, 2, 3, 4, 5, 6)
    back = _round_trip(EvalInput(contact={"created_at": naive}, as_of=AS_OF))
    assert back.contact["created_at"] == naive.replace(tzinfo=UTC)
    assert codec.micros(codec.from_micros(-1)) == -1


def test_empty_input_and_nan() -> None:
    inp = EvalInput(contact={}, as_of=AS_OF)
    assert _same(inp, _round_trip(inp))
    back = _round_trip(EvalInput(contact={"score": float("nan")}, as_of=AS_OF))
    assert math.isnan(back.contact["score"])


def test_bad_lines_are_codec_errors() -> None:
    with pytest.raises(codec.CodecError):
        codec.decode_input({"contact": {}})
    with pytest.raises(codec.CodecError):
        codec.decode_fields({"x": {"not": "a timestamp"}})
    with pytest.raises(codec.CodecError):
        codec.parse_result({"batch": "b"})


def test_results_and_catalog_round_trip() -> None:
    r = codec.Result("7-ab-1", 3, 9, True, AS_OF, None)
    assert codec.parse_result(json.loads(r.line())) == r
    e = codec.Result("7-ab-1", 3, 9, False, None, "ValueError: x", retry=True)
    assert codec.parse_result(json.loads(e.line())) == e
    cat = Catalog(
        contact_fields={"id": FieldType.STRING, "score": FieldType.FLOAT},
        personas=frozenset({"p"}),
    )
    assert codec.decode_catalog(json.loads(codec.dumps(codec.encode_catalog(cat)))) == cat


def _rule(pk: int, expr: str, catalog: Catalog) -> codec.Rule:
    return codec.Rule(
        pk=pk,
        name=f"r{pk}",
        version=1,
        persona_pk=pk,
        persona=f"p{pk}",
        exit="remove",
        status="active",
        ast=compile_criterion(expr, catalog).json,
    )


def test_the_job_keeps_the_newest_complete_generation_and_evaluates_like_ongoing() -> None:
    cat = Catalog.standard()
    expr1 = 'region = "EMEA"'
    expr2 = "count(login, 7 d) >= 1"
    gen1 = codec.rules_lines(1, cat, [_rule(1, expr1, cat)])
    gen2 = codec.rules_lines(2, cat, [_rule(1, expr1, cat), _rule(2, expr2, cat)])
    state = _DictState()
    # Lines of a generation may arrive in any order; it counts once complete.
    assert absorb_rule(state, gen2[2]) is None
    assert absorb_rule(state, gen1[0]) is None
    assert absorb_rule(state, gen1[1]) == 1
    assert absorb_rule(state, gen2[0]) is None
    assert absorb_rule(state, gen2[1]) == 2
    assert absorb_rule(state, gen1[1]) is None  # older, read again after a restore
    assert state.get(ACTIVE) == "2"
    assert all(k == ACTIVE or k.split(":")[1] == "2" for k in state.d)

    from personatag.engines.flink.programs.stream_job import compile_generation

    compiled = compile_generation(state, 2)
    inp = EvalInput(contact={"region": "EMEA"}, logins=[AS_OF - timedelta(days=2)], as_of=AS_OF)
    line = codec.work_line("5-x-1", 2, 42, [1, 2], inp)
    got = [codec.parse_result(json.loads(x)) for x in evaluate_work(line, 2, compiled)]
    crit = ongoing.build(2, "r2", 1, 2, "p2", "remove", "active", json.loads(gen2[2])["ast"], cat)
    assert got == [
        codec.Result("5-x-1", 42, 1, True, None),
        codec.Result("5-x-1", 42, 2, True, crit.next_due(inp, True)),
    ]
    assert got[1].due == AS_OF - timedelta(days=2) + timedelta(days=7)
    # Work for a generation this subtask does not hold: retry answers, no evaluation.
    stale = codec.work_line("5-x-2", 3, 42, [1], inp)
    (r,) = [codec.parse_result(json.loads(x)) for x in evaluate_work(stale, 2, compiled)]
    assert r.retry and r.error is not None and not r.match
    # A criterion missing from the generation is an error for that pair only.
    odd = codec.work_line("5-x-3", 2, 42, [1, 99], inp)
    a, b = [codec.parse_result(json.loads(x)) for x in evaluate_work(odd, 2, compiled)]
    assert a.match and a.error is None
    assert b.error == "criterion pk 99 is not in rules generation 2" and not b.retry


def test_an_empty_criteria_set_is_a_complete_generation() -> None:
    state = _DictState()
    (head,) = codec.rules_lines(5, Catalog.standard(), [])
    assert absorb_rule(state, head) == 5
