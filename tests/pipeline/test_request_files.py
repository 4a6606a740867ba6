"""Request data files: JSON and CSV parsing, every message exact, schema and parser in step."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from personatag.domain import Action
from personatag.errors import InputError
from personatag.requests.files import (
    RequestFile,
    RequestFileError,
    RequestItem,
    RowError,
    check_size,
    detect_format,
    parse_request,
    request_to_json,
)
from personatag.schemas import load_schema, request_json_schema

GENERATED_ID = re.compile(r"^req-\d{8}T\d{6}-[0-9a-f]{8}$")


def parse(text: str | bytes, name: str = "request.json", **kw: Any) -> RequestFile:
    data = text.encode() if isinstance(text, str) else text
    return parse_request(data, name=name, **kw)


def error(text: str | bytes, name: str = "request.json", **kw: Any) -> str:
    with pytest.raises(RequestFileError) as info:
        parse(text, name, **kw)
    return str(info.value)


def doc(**fields: Any) -> str:
    return json.dumps({"version": 1, **fields})


# --- JSON: good files ----------------------------------------------------------------


def test_json_defaults_with_an_expression() -> None:
    req = parse(doc(request_id="r-1", persona="cio", expr='job_title = "CIO"'))
    assert req == RequestFile(
        request_id="r-1",
        submitted_by=None,
        engine=None,  # the dispatcher's batch_engine
        dry_run=False,
        as_of=None,
        items=(RequestItem(persona="cio", action=Action.TAG, expr='job_title = "CIO"'),),
        format="json",
    )


def test_json_every_field() -> None:
    text = doc(
        request_id="2026-06-30:nightly_run.7",
        submitted_by="ops@example.com",
        persona="emea.macro",
        action="untag",
        engine="flink",
        dry_run=True,
        contacts=["c1", "c2", "c1", ""],
        as_of="2026-06-30T14:00:00+02:00",
    )
    req = parse(text)
    assert req.request_id == "2026-06-30:nightly_run.7"
    assert req.submitted_by == "ops@example.com"
    assert (req.engine, req.dry_run, req.format, req.row_errors) == ("flink", True, "json", ())
    assert req.as_of == datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
    # Duplicates and empty ids pass through: the job reports them by index.
    assert req.items == (
        RequestItem(
            persona="emea.macro",
            action=Action.UNTAG,
            contact_ids=((1, "c1"), (2, "c2"), (3, "c1"), (4, "")),
        ),
    )


def test_json_criterion_may_leave_out_the_persona() -> None:
    req = parse(doc(criterion="cio-by-title"))
    assert req.items == (RequestItem(persona=None, action=Action.TAG, criterion="cio-by-title"),)
    assert GENERATED_ID.match(req.request_id)


def test_json_request_id_order_file_then_caller_then_generated() -> None:
    assert parse(doc(request_id="in-file", criterion="c"), request_id="given").request_id == (
        "in-file"
    )
    assert parse(doc(criterion="c"), request_id="given").request_id == "given"
    first, second = parse(doc(criterion="c")), parse(doc(criterion="c"))
    assert first.request_id != second.request_id


def test_json_null_means_absent_where_the_default_is_null() -> None:
    req = parse(
        doc(request_id=None, submitted_by=None, persona="p", expr="x", criterion=None, as_of=None)
    )
    assert req.items[0].expr == "x" and req.as_of is None
    assert GENERATED_ID.match(req.request_id)


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        ("2026-06-30", datetime(2026, 6, 30, tzinfo=UTC)),
        ("2026-06-30T12:00:00", datetime(2026, 6, 30, 12, tzinfo=UTC)),
        ("2026-06-30T12:00:00Z", datetime(2026, 6, 30, 12, tzinfo=UTC)),
        ("2026-06-30T07:30:00-04:30", datetime(2026, 6, 30, 12, tzinfo=UTC)),
    ],
)
def test_json_as_of_forms(as_of: str, expected: datetime) -> None:
    assert parse(doc(criterion="c", as_of=as_of)).as_of == expected


def test_json_bom_crlf_and_version_as_float() -> None:
    text = '{\r\n  "version": 1.0,\r\n  "criterion": "c"\r\n}\r\n'
    req = parse(b"\xef\xbb\xbf" + text.encode(), name="in/Request.JSON")
    assert req.items[0].criterion == "c" and req.format == "json"


def test_json_limit_is_inclusive() -> None:
    text = doc(criterion="c")
    assert parse(text, max_bytes=len(text)).items[0].criterion == "c"


# --- JSON: bad files, exact messages --------------------------------------------------

BAD_JSON = [
    pytest.param(
        doc(persona="cio", action="tagg", expr="x"),
        'request.json: field "action": must be "tag" or "untag", got "tagg"',
        id="action",
    ),
    pytest.param(
        doc(persona="cio", criterion="c", expr="x"),
        'request.json: give exactly one of "criterion", "expr" or "contacts" '
        '(found "criterion" and "expr")',
        id="two-sources",
    ),
    pytest.param(
        doc(persona="cio", criterion="c", expr="x", contacts=["a"]),
        'request.json: give exactly one of "criterion", "expr" or "contacts" '
        '(found "criterion", "expr" and "contacts")',
        id="three-sources",
    ),
    pytest.param(
        doc(persona="cio"),
        'request.json: give exactly one of "criterion", "expr" or "contacts" (found none)',
        id="no-source",
    ),
    pytest.param(
        doc(expr="x"),
        'request.json: field "persona": required unless "criterion" is given',
        id="persona-missing",
    ),
    pytest.param(
        doc(persona=None, contacts=["a"]),
        'request.json: field "persona": required unless "criterion" is given',
        id="persona-null",
    ),
    pytest.param(
        doc(persona="CIO Team", expr="x"),
        'request.json: field "persona": "CIO Team" is not a persona key: use lowercase '
        'letters, digits, "_", "." or "-", starting with a letter or digit',
        id="persona-format",
    ),
    pytest.param(
        doc(persona="p" * 101, expr="x"),
        f'request.json: field "persona": "{"p" * 56}... is not a persona key: it is 101 '
        "characters long, the limit is 100",
        id="persona-too-long",
    ),
    pytest.param(
        doc(persona=7, expr="x"),
        'request.json: field "persona": must be a string, got 7',
        id="persona-type",
    ),
    pytest.param(
        doc(criterion="Bad Name"),
        'request.json: field "criterion": "Bad Name" is not a criterion name: use lowercase '
        'letters, digits, "_", "." or "-", starting with a letter or digit',
        id="criterion-format",
    ),
    pytest.param(
        doc(persona="p", expr="   "),
        'request.json: field "expr": must not be empty',
        id="expr-blank",
    ),
    pytest.param(
        doc(persona="p", expr=""),
        'request.json: field "expr": must not be empty',
        id="expr-empty",
    ),
    pytest.param(
        doc(persona="p", contacts=[]),
        'request.json: field "contacts": must list at least one contact id',
        id="contacts-empty",
    ),
    pytest.param(
        doc(persona="p", contacts="c1"),
        'request.json: field "contacts": must be an array of contact ids, got "c1"',
        id="contacts-type",
    ),
    pytest.param(
        doc(persona="p", contacts=["c1", 2, {"id": "c3"}]),
        'request.json: field "contacts[1]": must be a string, got 2; '
        'field "contacts[2]": must be a string, got an object',
        id="contacts-items",
    ),
    pytest.param(
        doc(persona="p", contacts=["c1", "c\u00002"]),
        'request.json: field "contacts[1]": contains a NUL character',
        id="contacts-nul",
    ),
    pytest.param(
        doc(persona="p", expr="x", engine=""),
        'request.json: field "engine": must not be empty',
        id="engine-empty",
    ),
    pytest.param(
        doc(persona="p", expr="x", engine=None),
        'request.json: field "engine": must be a string, got null',
        id="engine-null",
    ),
    pytest.param(
        doc(persona="p", expr="x", dry_run="false"),
        'request.json: field "dry_run": must be true or false, got "false"',
        id="dry-run-string",
    ),
    pytest.param(
        doc(persona="p", expr="x", dry_run=0),
        'request.json: field "dry_run": must be true or false, got 0',
        id="dry-run-number",
    ),
    pytest.param(
        doc(persona="p", expr="x", submitted_by=["a"]),
        'request.json: field "submitted_by": must be a string, got an array',
        id="submitted-by",
    ),
    pytest.param(
        doc(persona="p", expr="x", acton="tag"),
        'request.json: unknown field "acton" (did you mean "action"?)',
        id="unknown-close",
    ),
    pytest.param(
        doc(persona="p", expr="x", zzz=1),
        'request.json: unknown field "zzz" (known fields: version, request_id, submitted_by, '
        "persona, action, engine, dry_run, criterion, expr, contacts, as_of)",
        id="unknown-far",
    ),
    pytest.param(
        doc(persona="p", expr="x", as_of="yesterday"),
        'request.json: field "as_of": "yesterday" is not an ISO-8601 time '
        "(e.g. 2026-06-30T12:00:00Z)",
        id="as-of-text",
    ),
    pytest.param(
        doc(persona="p", expr="x", as_of="1899-12-31"),
        'request.json: field "as_of": as-of time 1899-12-31T00:00:00+00:00 is out of range: '
        "use a time from 1900 to 8999",
        id="as-of-range",
    ),
    pytest.param(
        doc(persona="p", expr="x", as_of="0001-01-01T00:00:00+05:00"),
        'request.json: field "as_of": "0001-01-01T00:00:00+05:00" is out of range: '
        "use a time from 1900 to 8999",
        id="as-of-overflow",
    ),
    pytest.param(
        doc(persona="p", expr="x", as_of=20260630),
        'request.json: field "as_of": must be a string, got 20260630',
        id="as-of-type",
    ),
    pytest.param(
        doc(request_id="a/../b", criterion="c"),
        'request.json: field "request_id": "a/../b" has characters that are not allowed '
        '("/"): use letters, digits, ".", "_", ":" and "-"',
        id="request-id-slash",
    ),
    pytest.param(
        doc(request_id="my request", criterion="c"),
        'request.json: field "request_id": "my request" has characters that are not allowed '
        '(" "): use letters, digits, ".", "_", ":" and "-"',
        id="request-id-space",
    ),
    pytest.param(
        doc(request_id="..", criterion="c"),
        'request.json: field "request_id": ".." must not be "." or contain "..": '
        "it names a results folder",
        id="request-id-dotdot",
    ),
    pytest.param(
        doc(request_id=".", criterion="c"),
        'request.json: field "request_id": "." must not be "." or contain "..": '
        "it names a results folder",
        id="request-id-dot",
    ),
    pytest.param(
        doc(request_id="a..b", criterion="c"),
        'request.json: field "request_id": "a..b" must not be "." or contain "..": '
        "it names a results folder",
        id="request-id-inner-dotdot",
    ),
    pytest.param(
        doc(request_id="", criterion="c"),
        'request.json: field "request_id": must not be empty',
        id="request-id-empty",
    ),
    pytest.param(
        doc(request_id="r" * 129, criterion="c"),
        'request.json: field "request_id": is 129 characters long; the limit is 128',
        id="request-id-long",
    ),
    pytest.param(
        doc(request_id="r\n", criterion="c"),
        'request.json: field "request_id": "r\\n" has characters that are not allowed '
        '("\\n"): use letters, digits, ".", "_", ":" and "-"',
        id="request-id-newline",
    ),
    pytest.param(
        doc(request_id=5, criterion="c"),
        'request.json: field "request_id": must be a string, got 5',
        id="request-id-type",
    ),
    pytest.param(
        doc(persona="cio", action="TAG", dry_run="yes", expr="x", contacts=["a"]),
        'request.json: field "action": must be "tag" or "untag", got "TAG"; field "dry_run": '
        'must be true or false, got "yes"; give exactly one of "criterion", "expr" or '
        '"contacts" (found "expr" and "contacts")',
        id="several-problems",
    ),
    pytest.param(
        json.dumps({"criterion": "c"}),
        'request.json: field "version": missing; supported versions: 1',
        id="version-missing",
    ),
    pytest.param(
        json.dumps({"version": 2, "criterion": "c"}),
        'request.json: field "version": unsupported version 2; supported versions: 1',
        id="version-2",
    ),
    pytest.param(
        json.dumps({"version": "1", "criterion": "c"}),
        'request.json: field "version": unsupported version "1"; supported versions: 1',
        id="version-string",
    ),
    pytest.param(
        json.dumps({"version": True, "criterion": "c"}),
        'request.json: field "version": unsupported version true; supported versions: 1',
        id="version-true",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_JSON)
def test_bad_json_requests(text: str, message: str) -> None:
    assert error(text) == message


@pytest.mark.parametrize(
    ("data", "message", "line"),
    [
        (b"", "request.json: empty file", None),
        (b" \r\n\t\n", "request.json: empty file", None),
        (b"\xef\xbb\xbf", "request.json: empty file", None),
        (
            b'{"version": 1,\n "criterion": "caf\xe9"}',
            "request.json:2: not UTF-8 text (byte 0xe9 at column 19): save it as UTF-8",
            2,
        ),
        (
            b'{"version": 1,\r\n "criterion" "c"}',
            "request.json:2: not valid JSON: Expecting ':' delimiter (column 14)",
            2,
        ),
        (
            b"{'version': 1}",
            "request.json:1: not valid JSON: Expecting property name "
            "enclosed in double quotes (column 2)",
            1,
        ),
        (b'{"version": 1} x', "request.json:1: not valid JSON: Extra data (column 16)", 1),
        (b'{"version": NaN}', "request.json: not valid JSON: NaN is not a JSON value", None),
        (
            b'{"version": 1, "action": "tag", "action": "untag", "criterion": "c"}',
            'request.json: key "action" appears more than once: give each field once',
            None,
        ),
        (b'["c1", "c2"]', "request.json: expected a JSON object ({...}), got an array", None),
        (b'"c1"', 'request.json: expected a JSON object ({...}), got "c1"', None),
        (b"null", "request.json: expected a JSON object ({...}), got null", None),
        (b"[" * 100_000, "request.json: not valid JSON: nested too deeply", None),
    ],
)
def test_unreadable_json_files(data: bytes, message: str, line: int | None) -> None:
    with pytest.raises(RequestFileError) as info:
        parse_request(data, name="request.json")
    assert str(info.value) == message
    assert (info.value.source, info.value.line) == ("request.json", line)
    assert isinstance(info.value, InputError)


def test_duplicate_keys_inside_values_are_rejected_too() -> None:
    text = '{"version": 1, "contacts": [{"id": 1, "id": 2}], "persona": "p"}'
    assert error(text) == 'request.json: key "id" appears more than once: give each field once'


# --- size and format ----------------------------------------------------------------


def test_size_limit() -> None:
    text = doc(criterion="c")
    assert error(text, max_bytes=10) == (
        f"request.json: file is too large ({len(text)} bytes); the limit is 10 bytes"
    )
    with pytest.raises(RequestFileError) as info:
        check_size(150 * 2**20, name="big.csv")
    assert str(info.value) == "big.csv: file is too large (150 MiB); the limit is 100 MiB"
    with pytest.raises(RequestFileError, match=r"\(1\.5 KiB\); the limit is 1 KiB"):
        check_size(1536, name="r.json", max_bytes=1024)
    check_size(100 * 2**20, name="r.json")  # the limit itself is allowed


def test_the_limit_is_checked_before_the_content() -> None:
    assert error(b"\xff" * 50, name="r.csv", max_bytes=49) == (
        "r.csv: file is too large (50 bytes); the limit is 49 bytes"
    )


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("r.json", "json"),
        ("R.JSON", "json"),
        ("requests/2026/x.csv", "csv"),
        ("C:\\drop\\x.Csv", "csv"),
        ("a.b.json", "json"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("r.txt", 'r.txt: unknown request file type (extension ".txt"): use .json or .csv'),
        ("r.json.gz", 'r.json.gz: unknown request file type (extension ".gz"): use .json or .csv'),
        ("dir.json/r", "dir.json/r: unknown request file type (no extension): use .json or .csv"),
    ],
)
def test_unknown_formats(name: str, message: str) -> None:
    with pytest.raises(RequestFileError) as info:
        detect_format(name)
    assert str(info.value) == message
    assert error(doc(criterion="c"), name=name) == message


# --- CSV ----------------------------------------------------------------------------


def test_csv_groups_by_persona_and_action_in_first_seen_order() -> None:
    text = (
        "contact_id,persona,action\n"
        "c1,cio,tag\n"
        "c2,emea.macro,untag\n"
        "c3,cio,tag\n"
        "c4,cio,untag\n"
        "c5,emea.macro,untag\n"
        "c1,emea.macro,tag\n"
    )
    req = parse(text, name="requests/batch-42.csv")
    assert req == RequestFile(
        request_id="batch-42",
        submitted_by=None,
        engine=None,
        dry_run=False,
        as_of=None,
        items=(
            RequestItem("cio", Action.TAG, contact_ids=((2, "c1"), (4, "c3"))),
            RequestItem("emea.macro", Action.UNTAG, contact_ids=((3, "c2"), (6, "c5"))),
            RequestItem("cio", Action.UNTAG, contact_ids=((5, "c4"),)),
            RequestItem("emea.macro", Action.TAG, contact_ids=((7, "c1"),)),
        ),
        format="csv",
    )


def test_csv_header_case_whitespace_order_bom_crlf_and_blank_lines() -> None:
    text = (
        "\ufeff Action ,PERSONA,\tContact_Id\r\n"  # 1
        "\r\n"  # 2
        "tag, cio ,c1\r\n"  # 3
        ",,\r\n"  # 4
        'tag,cio,"c\r\n3"\r\n'  # 5-6
        "untag,cio, c2 \r\n"  # 7
        "tag,cio,c4"  # 8, no final line break
    )
    req = parse(text.encode(), name="r.csv")
    assert req.items == (
        RequestItem("cio", Action.TAG, contact_ids=((3, "c1"), (5, "c\r\n3"), (8, "c4"))),
        RequestItem("cio", Action.UNTAG, contact_ids=((7, "c2"),)),
    )
    assert req.row_errors == ()


def test_csv_row_errors_keep_the_rest_and_count_physical_lines() -> None:
    text = (
        "contact_id,persona,action\n"  # 1
        "c1,cio,tag\n"  # 2
        '"c2 with a\nline break",cio,tag\n'  # 3-4
        ",cio,tag\n"  # 5
        "c4,,tag\n"  # 6
        "c5,cio,remove\n"  # 7
        "c6,cio,\n"  # 8
        '"multi\n\nline",CIO,tag\n'  # 9-11
        "c8,cio\n"  # 12
        "c9,cio,tag,extra\n"  # 13
        "c10,cio,TAG\n"  # 14
        ",Bad Key,x\n"  # 15
        "c\x0012,cio,tag\n"  # 16
        "c13,cio,untag\n"  # 17
        "c14,cio,tag\n"  # 18
        "c15,cio,tag\n"  # 19
    )
    req = parse(text, name="request.csv")
    assert req.items == (
        RequestItem(
            "cio",
            Action.TAG,
            contact_ids=((2, "c1"), (3, "c2 with a\nline break"), (18, "c14"), (19, "c15")),
        ),
        RequestItem("cio", Action.UNTAG, contact_ids=((17, "c13"),)),
    )
    key_rule = 'use lowercase letters, digits, "_", "." or "-", starting with a letter or digit'
    assert req.row_errors == (
        RowError(5, "", "cio", "contact_id is empty"),
        RowError(6, "c4", "", "persona is empty"),
        RowError(7, "c5", "cio", 'action must be tag or untag, got "remove"'),
        RowError(8, "c6", "cio", "action is empty"),
        RowError(9, "multi\n\nline", "CIO", f'persona "CIO" is not a persona key: {key_rule}'),
        RowError(12, "c8", "cio", "expected 3 fields like the header, got 2"),
        RowError(13, "c9", "cio", "expected 3 fields like the header, got 4"),
        RowError(14, "c10", "cio", 'action must be tag or untag, got "TAG"'),
        RowError(
            15,
            "",
            "Bad Key",
            f'contact_id is empty; persona "Bad Key" is not a persona key: {key_rule}; '
            'action must be tag or untag, got "x"',
        ),
        RowError(16, "c\x0012", "cio", "contact_id contains a NUL character"),
    )
    # the shape the job's failed.csv is written from
    line, contact_id, persona, reason = req.row_errors[2]
    assert f"request.csv:{line}: {reason}" == (
        'request.csv:7: action must be tag or untag, got "remove"'
    )
    assert (contact_id, persona) == ("c5", "cio")


def test_csv_rows_that_both_tag_and_untag_a_contact_are_left_out() -> None:
    text = "contact_id,persona,action\nc1,cio,tag\nc2,cio,tag\nc1,cio,untag\nc1,emea,untag\n"
    req = parse(text, name="r.csv")
    assert req.items == (
        RequestItem("cio", Action.TAG, contact_ids=((3, "c2"),)),
        RequestItem("emea", Action.UNTAG, contact_ids=((5, "c1"),)),
    )
    reason = 'contact is both tagged and untagged with persona "cio" in this file'
    assert req.row_errors == (RowError(2, "c1", "cio", reason), RowError(4, "c1", "cio", reason))


def test_csv_with_only_bad_rows_has_no_items() -> None:
    req = parse("contact_id,persona,action\nc1,cio,delete\n", name="r.csv")
    assert req.items == ()
    assert req.row_errors == (
        RowError(2, "c1", "cio", 'action must be tag or untag, got "delete"'),
    )


def test_csv_request_id_from_the_name_or_the_caller() -> None:
    text = "contact_id,persona,action\nc1,cio,tag\n"
    assert parse(text, name="in/2026-06-30.batch:1.csv").request_id == "2026-06-30.batch:1"
    assert parse(text, name="in/whatever.csv", request_id="chosen").request_id == "chosen"
    assert error(text, name="my batch.csv") == (
        'my batch.csv: the request id comes from the file name and "my batch" has characters '
        'that are not allowed (" "): use letters, digits, ".", "_", ":" and "-"'
    )
    assert error(text, name="...csv") == (
        'the request id comes from the file name and ".." must not be "." or contain "..": '
        "it names a results folder"
    ).join(["...csv: ", ""])
    assert error(text, name="ok.csv", request_id="a/b") == (
        'ok.csv: request id "a/b" has characters that are not allowed ("/"): '
        'use letters, digits, ".", "_", ":" and "-"'
    )


@pytest.mark.parametrize(
    ("data", "message", "line"),
    [
        (b"", "r.csv: empty file", None),
        (b"\xef\xbb\xbf\r\n", "r.csv: empty file", None),
        (b"contact_id,persona,action\r\n", "r.csv: no rows after the header", None),
        (b"contact_id,persona,action\n,,\n\n", "r.csv: no rows after the header", None),
        (b'""\n', "r.csv: no header row: the header is contact_id,persona,action", None),
        (
            b"contact_id,persona\nc1,cio\n",
            'r.csv:1: missing column "action": the header is contact_id,persona,action',
            1,
        ),
        (
            b"\nid,action\nc1,tag\n",
            'r.csv:2: unknown column "id": the header is contact_id,persona,action',
            2,
        ),
        (
            b"contact_id\n",
            'r.csv:1: missing column "persona" and "action": the header is '
            "contact_id,persona,action",
            1,
        ),
        (
            b"contact_id,persona,action,note\nc1,cio,tag,x\n",
            'r.csv:1: unknown column "note": the header is contact_id,persona,action',
            1,
        ),
        (
            b"contact_id,persona,Contact_ID,action\n",
            'r.csv:1: duplicate column "contact_id"',
            1,
        ),
        (
            b"contact_id;persona;action\nc1;cio;tag\n",
            'r.csv:1: unknown column "contact_id;persona;action": the header is '
            "contact_id,persona,action; is the file comma-separated?",
            1,
        ),
        (
            b"contact_id,persona,action\nc1,cio,tag\nc2\nc3;cio;tag\n",
            "r.csv: 2 of 3 rows do not have 3 fields like the header: is the file comma-separated?",
            None,
        ),
        (
            b"contact_id,persona,action\nc1,cio,tag\nc\xc3\xa9,cio,tag\nc\xe9,cio,tag\n",
            "r.csv:4: not UTF-8 text (byte 0xe9 at column 2): save it as UTF-8",
            4,
        ),
        (
            b'contact_id,persona,action\nc1,cio,tag\n"' + b"x" * 200_000 + b'",cio,tag\n',
            "r.csv:3: not valid CSV: field larger than field limit (131072)",
            3,
        ),
    ],
)
def test_unreadable_csv_files(data: bytes, message: str, line: int | None) -> None:
    with pytest.raises(RequestFileError) as info:
        parse_request(data, name="r.csv")
    assert (str(info.value), info.value.line) == (message, line)


def test_one_wrong_width_row_in_two_is_a_row_error() -> None:
    req = parse("contact_id,persona,action\nc1,cio,tag\nc2\n", name="r.csv")
    assert req.row_errors == (RowError(3, "c2", "", "expected 3 fields like the header, got 1"),)


# --- canonical JSON -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        doc(criterion="c"),
        doc(
            request_id="r1",
            submitted_by="me",
            persona="p",
            action="untag",
            engine="flink",
            dry_run=True,
            expr="region = 'EMEA'",
            as_of="2026-06-30T12:00:00+02:00",
        ),
        doc(persona="p", contacts=["a", "b"]),
    ],
)
def test_request_to_json_round_trips(text: str) -> None:
    req = parse(text)
    out = request_to_json(req)
    assert out["version"] == 1 and out["request_id"] == req.request_id
    assert parse(json.dumps(out)) == req
    assert list(out) == [k for k in load_schema()["properties"] if k in out]


def test_request_to_json_canonical_form() -> None:
    req = parse(doc(request_id="r1", persona="p", expr="x", as_of="2026-06-30T14:00:00+02:00"))
    assert request_to_json(req) == {
        "version": 1,
        "request_id": "r1",
        "submitted_by": None,
        "persona": "p",
        "action": "tag",
        "dry_run": False,
        "expr": "x",
        "as_of": "2026-06-30T12:00:00+00:00",
    }


def test_request_to_json_of_csv_requests() -> None:
    one = parse("contact_id,persona,action\nc1,cio,untag\nc2,cio,untag\n", name="b1.csv")
    assert request_to_json(one)["contacts"] == ["c1", "c2"]
    two = parse("contact_id,persona,action\nc1,cio,tag\nc2,cio,untag\n", name="b2.csv")
    with pytest.raises(RequestFileError) as info:
        request_to_json(two)
    assert str(info.value) == "b2: a request with 2 items cannot be written as one JSON request"
    bad = parse("contact_id,persona,action\nc1,cio,tag\nc2,cio,x\n", name="b3.csv")
    with pytest.raises(RequestFileError, match="b3: a request with rows that were left out"):
        request_to_json(bad)


# --- the JSON Schema: committed, generated and the parser agree --------------------------

SCHEMA_GOOD = [
    doc(criterion="c"),
    doc(criterion="c", persona="p", request_id=None, submitted_by=None),
    doc(persona="p", expr="x", action="untag", engine="flink", dry_run=True),
    doc(persona="p", contacts=["a", ""], as_of="2026-06-30", request_id="A-z_0.9:x"),
    doc(persona="p", contacts=["a"], expr=None, criterion=None),
    json.dumps({"version": 1.0, "criterion": "c"}),
]
# Every bad example whose problem the schema can express (not duplicate keys,
# not as_of times, not file-level problems).
SCHEMA_BAD = [param.values[0] for param in BAD_JSON if "as_of" not in param.values[1]] + [
    doc(persona="p", expr="x", request_id="r\n"),  # `$` must not match before a newline
    doc(persona="p\n", expr="x"),
    json.dumps([]),
]


def test_committed_schema_is_the_generated_one() -> None:
    assert load_schema() == request_json_schema(), (
        "src/personatag/schemas/request-v1.schema.json is stale: run "
        '.venv/bin/python -c "from personatag.schemas import write_request_schema as w; w()"'
    )
    assert load_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("text", SCHEMA_GOOD)
def test_good_examples_pass_schema_and_parser(text: str) -> None:
    import jsonschema

    jsonschema.Draft202012Validator(load_schema()).validate(json.loads(text))
    parse(text)


@pytest.mark.parametrize("text", SCHEMA_BAD)
def test_bad_examples_fail_schema_and_parser(text: str) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema())
    assert not validator.is_valid(json.loads(text))
    with pytest.raises(RequestFileError):
        parse(text)


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(load_schema())


# --- docs/requests.md shows the real messages -----------------------------------------

DOC_PAGE = (Path(__file__).resolve().parents[2] / "docs" / "requests.md").read_text()
DOCUMENTED = [
    ("request.json", doc(persona="cio", action="tagg", expr="x")),
    ("request.json", doc(persona="cio", criterion="c", expr="x")),
    ("request.json", doc(expr="x")),
    ("request.json", doc(persona="CIO Team", expr="x")),
    ("request.json", doc(request_id="a/b", criterion="c")),
    ("request.json", doc(request_id="a..b", criterion="c")),
    ("request.json", doc(persona="p", contacts=[])),
    ("request.json", doc(persona="p", contacts=["c1", 2])),
    ("request.json", doc(persona="p", expr=" ")),
    ("request.json", doc(persona="p", expr="x", dry_run="false")),
    ("request.json", doc(persona="p", expr="x", acton="tag")),
    ("request.json", doc(persona="p", expr="x", as_of="yesterday")),
    ("request.json", doc(persona="p", expr="x", as_of="1899-12-31")),
    ("request.json", json.dumps({"criterion": "c"})),
    ("request.json", json.dumps({"version": 2})),
    ("request.json", "[]"),
    ("request.json", '{"version": NaN}'),
    ("request.json", '{"version": 1,\n "criterion" "c"}'),
    ("request.json", '{"version": 1, "action": "tag", "action": "untag"}'),
    ("request.json", ""),
    ("request.csv", b"contact_id,persona,action\nc1,p,tag\nc\xc3\xa9,p,tag\nc\xe9,p,tag\n"),
    ("request.csv", "contact_id,persona\n"),
    ("request.csv", "contact_id,persona,action,note\n"),
    ("request.csv", "contact_id,persona,action\n"),
    (
        "request.csv",
        "contact_id,persona,action\nc1;p;tag\nc2;p;tag\nc3;p;tag\nc4;p;tag\nc5;p;tag\nc6,p,tag\n",
    ),
    ("my batch.csv", "contact_id,persona,action\nc1,p,tag\n"),
    ("r.txt", "{}"),
]


@pytest.mark.parametrize(("name", "data"), DOCUMENTED)
def test_documented_messages_are_the_real_ones(name: str, data: str | bytes) -> None:
    message = error(data, name=name)
    assert f"`{message}`" in DOC_PAGE


def test_documented_row_reasons_are_the_real_ones() -> None:
    text = (
        "contact_id,persona,action\n,p,tag\nc\x00,p,tag\nc,,tag\nc,CIO,tag\nc,p,\nc,p,remove\n"
        "c,p\nc1,cio,tag\nc1,cio,untag\nok,p,tag\nok2,p,tag\nok3,p,tag\nok4,p,tag\n"
    )
    reasons = {e.reason for e in parse(text, name="r.csv").row_errors}
    assert len(reasons) == 8
    assert all(f"`{reason}`" in DOC_PAGE for reason in reasons), reasons


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"version": 1, "persona": "\\ud800", "expr": "region = \\"x\\""}',
            'request.json: field "persona": invalid character U+D800 (a lone surrogate) at '
            "character 1: it is not valid Unicode text",
        ),
        (
            '{"version": 1, "persona": "p", "request_id": "r\\ud800", "expr": "region = \\"x\\""}',
            'request.json: field "request_id": invalid character U+D800',
        ),
        (
            '{"version": 1, "persona": "p", "contacts": ["c1", "c\\udc80"]}',
            'request.json: field "contacts[1]": invalid character U+DC80 (a lone surrogate) at '
            "character 2",
        ),
        (
            '{"version": 1, "persona": "p", "expr": "region = \\"\\udfff\\""}',
            'request.json: field "expr": invalid character U+DFFF (a lone surrogate) at '
            "character 11",
        ),
        ('{"version": 1, "\\ud800": 1}', "request.json: a key invalid character U+D800"),
        (
            '{"version": ' + "9" * 5000 + "}",
            "request.json: not valid JSON: a number of more than 4,300",
        ),
    ],
)
def test_lone_surrogates_are_refused_with_where(text: str, message: str) -> None:
    """Issue 17 item 11: a lone surrogate in a request file (the persona, the request
    id) made `submit` print `unexpected UnicodeEncodeError` and the API answer 500;
    it is refused with the field and the character's position."""
    assert error(text).startswith(message)
