"""Import from CSV and JSON Lines, on real SQLite and real PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from personatag.definitions.attributes import add_attribute
from personatag.errors import InputError
from personatag.importer import ImportResult, import_file
from personatag.store import Store


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def run(
    store: Store, kind: str, path: Path, **kwargs: Any
) -> tuple[ImportResult, list[tuple[int, str]]]:
    rejects: list[tuple[int, str]] = []
    result = import_file(
        store, kind, path, on_reject=lambda line, why: rejects.append((line, why)), **kwargs
    )
    return result, rejects


def contacts(store: Store) -> dict[str, dict[str, Any]]:
    c = store.tables.contacts
    with store.read() as conn:
        return {r["id"]: dict(r) for r in conn.execute(select(c)).mappings()}


def count(store: Store, table: str) -> int:
    t = getattr(store.tables, table)
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(t)).scalar_one())


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


FULL_HEADER = (
    "id,email,first_name,last_name,job_title,seniority,region,country,firm,firm_type,"
    "interests,created_at,updated_at,last_login_at\n"
)


def test_csv_values_nulls_lists_and_timestamps(store: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "contacts.csv",
        FULL_HEADER
        + "c1,ann@x.com,Ann,Lee,CIO,5,EMEA,GB,Acme,asset manager,"
        + "Energy; Credit ;,2024-03-10T09:30:00+05:30,2024-03-10 09:30:00,2024-03-11\n"
        + "c2,,,,,,,,,,,,,\n"
        + 'c3,"b@x.com","Ló, Zoë",,,,,,,,"Rates",2024-01-01T00:00:00Z,,\n',
    )
    result, rejects = run(store, "contacts", path)
    assert rejects == []
    assert result == ImportResult(inserted=3, updated=0, rejected=0)
    rows = contacts(store)
    c1 = rows["c1"]
    assert (c1["email"], c1["first_name"], c1["job_title"], c1["seniority"]) == (
        "ann@x.com",
        "Ann",
        "CIO",
        5,
    )
    assert c1["interests"] == ["Energy", "Credit"]
    assert c1["created_at"] == utc(2024, 3, 10, 4, 0)
    assert c1["updated_at"] == utc(2024, 3, 10, 9, 30)
    assert c1["last_login_at"] == utc(2024, 3, 11)
    c2 = rows["c2"]
    assert all(c2[k] is None for k in c2 if k not in ("pk", "id"))
    assert rows["c3"]["first_name"] == "Ló, Zoë"
    assert rows["c3"]["interests"] == ["Rates"]


def test_jsonl_values_nulls_lists_and_absent_keys(store: Store, tmp_path: Path) -> None:
    lines = [
        {"id": "c1", "email": "a@x.com", "interests": ["Energy", "Credit"], "seniority": 4},
        {"id": "c2", "interests": "Rates; FX", "created_at": "2024-05-01T12:00:00-04:00"},
        {"id": "c3", "email": None, "interests": None, "seniority": "3"},
        {"id": "c4", "interests": []},
    ]
    path = write(tmp_path, "c.jsonl", "\n".join(json.dumps(o) for o in lines) + "\n\n")
    result, rejects = run(store, "contacts", path)
    assert rejects == []
    assert result == ImportResult(3 + 1, 0, 0)
    rows = contacts(store)
    assert rows["c1"]["interests"] == ["Energy", "Credit"]
    assert rows["c1"]["seniority"] == 4
    assert rows["c2"]["interests"] == ["Rates", "FX"]
    assert rows["c2"]["created_at"] == utc(2024, 5, 1, 16, 0)
    assert rows["c2"]["email"] is None
    assert rows["c3"]["interests"] is None
    assert rows["c3"]["seniority"] == 3
    assert rows["c4"]["interests"] == []


def test_upsert_counts_inserted_and_updated(store: Store, tmp_path: Path) -> None:
    first = write(tmp_path, "a.csv", "id,email\nc1,a@x\nc2,b@x\nc3,c@x\n")
    assert run(store, "contacts", first)[0] == ImportResult(3, 0, 0)
    second = write(tmp_path, "b.csv", "id,email\nc2,B@x\nc4,d@x\nc3,c@x\n")
    assert run(store, "contacts", second)[0] == ImportResult(1, 2, 0)
    # identical values still count as updated
    assert run(store, "contacts", second)[0] == ImportResult(0, 3, 0)
    rows = contacts(store)
    assert {k: v["email"] for k, v in rows.items()} == {
        "c1": "a@x",
        "c2": "B@x",
        "c3": "c@x",
        "c4": "d@x",
    }


def test_partial_columns_leave_others_untouched(store: Store, tmp_path: Path) -> None:
    full = write(tmp_path, "full.csv", "id,email,job_title,interests\nc1,a@x,CIO,Energy\n")
    run(store, "contacts", full)
    partial = write(tmp_path, "part.csv", "id,job_title\nc1,Treasurer\nc2,Economist\n")
    assert run(store, "contacts", partial)[0] == ImportResult(1, 1, 0)
    rows = contacts(store)
    assert rows["c1"]["email"] == "a@x"
    assert rows["c1"]["interests"] == ["Energy"]
    assert rows["c1"]["job_title"] == "Treasurer"
    assert rows["c2"]["email"] is None
    # JSON Lines: each object updates only its own keys
    path = write(
        tmp_path, "p.jsonl", '{"id": "c1", "email": null}\n{"id": "c2", "region": "APAC"}\n'
    )
    assert run(store, "contacts", path)[0] == ImportResult(0, 2, 0)
    rows = contacts(store)
    assert rows["c1"]["email"] is None
    assert rows["c1"]["job_title"] == "Treasurer"
    assert (rows["c2"]["region"], rows["c2"]["job_title"]) == ("APAC", "Economist")


def test_duplicate_ids_in_one_file_last_wins(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "id,email\nc1,first@x\nc2,b@x\nc1,last@x\n")
    assert run(store, "contacts", path)[0] == ImportResult(2, 1, 0)
    assert contacts(store)["c1"]["email"] == "last@x"
    # repeats merge key by key in JSON Lines
    jl = write(tmp_path, "d.jsonl", '{"id": "c9", "email": "e@x"}\n{"id": "c9", "firm": "F"}\n')
    assert run(store, "contacts", jl)[0] == ImportResult(1, 1, 0)
    assert (contacts(store)["c9"]["email"], contacts(store)["c9"]["firm"]) == ("e@x", "F")


def test_csv_bad_rows_are_reported_and_the_rest_loads(store: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.csv",
        "id,seniority,created_at,interests\n"  # line 1
        "c1,3,2024-01-01,Energy\n"  # 2 ok
        "c2,three,2024-01-01,\n"  # 3 bad int
        "c3,2,yesterday,\n"  # 4 bad timestamp
        ",2,2024-01-01,\n"  # 5 missing id
        "c5,2\n"  # 6 wrong field count
        "c6,1.0,,\n"  # 7 int given as float
        "\n"  # 8 blank: skipped
        "c7,+2,,\n",  # 9 ok
    )
    result, rejects = run(store, "contacts", path)
    assert result == ImportResult(2, 0, 5)
    assert [line for line, _ in rejects] == [3, 4, 5, 6, 7]
    reasons = dict(rejects)
    assert "seniority" in reasons[3] and "'three'" in reasons[3]
    assert "created_at" in reasons[4] and "yesterday" in reasons[4]
    assert reasons[5] == "missing id"
    assert reasons[6] == "expected 4 fields, found 2"
    assert "integer" in reasons[7]
    assert set(contacts(store)) == {"c1", "c7"}
    assert contacts(store)["c7"]["seniority"] == 2


def test_jsonl_bad_rows(store: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.jsonl",
        '{"id": "c1", "seniority": 2}\n'  # 1 ok
        "\n"  # 2 blank
        '{"id": "c2", "seniority": "x"}\n'  # 3 bad
        "{not json\n"  # 4
        "[1, 2]\n"  # 5
        '{"email": "a@x"}\n'  # 6 missing id
        '{"id": "c7", "seniority": true}\n'  # 7 bool is not an int
        '{"id": "c8", "id": "c9"}\n'  # 8 duplicate key
        '{"id": "c10", "interests": [1]}\n',  # 9 non-string list item
    )
    result, rejects = run(store, "contacts", path)
    assert result == ImportResult(1, 0, 7)
    assert [line for line, _ in rejects] == [3, 4, 5, 6, 7, 8, 9]
    reasons = dict(rejects)
    assert reasons[4].startswith("invalid JSON")
    assert reasons[5] == "expected a JSON object"
    assert reasons[6] == "missing id"
    assert "duplicate key 'id'" in reasons[8]


@pytest.mark.parametrize(
    ("header", "column"),
    [
        ("id,email,regoin", "regoin"),
        ("email,region", "id"),
        ("id,email,email", "email"),
    ],
)
def test_header_errors_write_nothing(
    store: Store, tmp_path: Path, header: str, column: str
) -> None:
    body = "\n".join(["c1,a@x,EMEA"] * 5)
    path = write(tmp_path, "h.csv", f"{header}\n{body}\n")
    with pytest.raises(InputError) as err:
        import_file(store, "contacts", path, batch_size=1)
    assert repr(column) in str(err.value)
    assert str(path) in str(err.value)
    assert count(store, "contacts") == 0


def test_jsonl_unknown_key_late_in_file_writes_nothing(store: Store, tmp_path: Path) -> None:
    lines = [json.dumps({"id": f"c{i}"}) for i in range(5)] + ['{"id": "c9", "regoin": "EMEA"}']
    path = write(tmp_path, "u.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"u\.jsonl:6: unknown column 'regoin'"):
        import_file(store, "contacts", path, batch_size=1)
    assert count(store, "contacts") == 0


def test_reads_and_logins(store: Store, tmp_path: Path) -> None:
    run(store, "contacts", write(tmp_path, "c.csv", "id,last_login_at\nc1,2024-06-01\nc2,\n"))
    pubs = write(
        tmp_path,
        "p.csv",
        "id,title,published_at,asset_class,sector,region,series\n"
        "p1,Oil outlook,2024-05-01T08:00:00Z,Equities,Energy,EMEA,Energy Weekly\n"
        "p2,Rates,2024-05-02,Rates,,Global,\n",
    )
    assert run(store, "publications", pubs)[0] == ImportResult(2, 0, 0)
    reads = write(
        tmp_path,
        "r.csv",
        "contact_id,publication_id,read_at\n"
        "c1,p1,2024-05-03T10:00:00Z\n"  # 2
        "c1,p1,2024-05-03T10:00:00Z\n"  # 3 duplicate in file
        "c9,p1,2024-05-03T10:00:00Z\n"  # 4 unknown contact
        "c2,p7,2024-05-03T10:00:00Z\n"  # 5 unknown publication
        "c2,p2,2024-05-04\n"  # 6
        "c2,p2,\n",  # 7 missing read_at
    )
    result, rejects = run(store, "reads", reads, batch_size=2)
    assert result == ImportResult(2, 1, 3)
    assert sorted(rejects) == [
        (4, "unknown contact id 'c9'"),
        (5, "unknown publication id 'p7'"),
        (7, "missing read_at"),
    ]
    assert count(store, "reads") == 2
    # a re-run is idempotent: everything already stored counts as updated
    assert run(store, "reads", reads)[0] == ImportResult(0, 3, 3)
    assert count(store, "reads") == 2

    logins = write(
        tmp_path,
        "l.jsonl",
        '{"contact_id": "c1", "login_at": "2024-05-03T09:58:00Z"}\n'
        '{"contact_id": "c2", "login_at": "2024-05-04T07:00:00Z"}\n'
        '{"contact_id": "c2", "login_at": "2024-05-05T07:00:00+01:00"}\n'
        '{"contact_id": "cX", "login_at": "2024-05-05T07:00:00Z"}\n',
    )
    result, rejects = run(store, "logins", logins)
    assert result == ImportResult(3, 0, 1)
    assert rejects == [(4, "unknown contact id 'cX'")]
    rows = contacts(store)
    # an older login does not lower last_login_at; a newer one raises it
    assert rows["c1"]["last_login_at"] == utc(2024, 6, 1)
    assert rows["c2"]["last_login_at"] == utc(2024, 5, 5, 6, 0)
    assert run(store, "logins", logins)[0] == ImportResult(0, 3, 1)


def test_custom_attributes(store: Store, tmp_path: Path) -> None:
    for name, field_type in (
        ("aum_musd", "float"),
        ("kyc_ok", "bool"),
        ("desk", "string"),
        ("tier", "int"),
        ("desks", "list"),
        ("onboarded_at", "timestamp"),
    ):
        add_attribute(store, name, field_type)
    path = write(
        tmp_path,
        "c.csv",
        "id,aum_musd,kyc_ok,desk,tier,desks,onboarded_at\n"
        "c1,1250.5,YES,Macro,1,Macro;Rates,2024-02-29T23:30:00-01:00\n"
        "c2,,no,,,,\n"
        "c3,1e3,maybe,x,2,,\n",
    )
    result, rejects = run(store, "contacts", path)
    assert result == ImportResult(2, 0, 1)
    assert rejects == [(4, "kyc_ok: expected true/false/1/0/yes/no, got 'maybe'")]
    rows = contacts(store)
    assert rows["c1"]["cx_aum_musd"] == 1250.5
    assert rows["c1"]["cx_kyc_ok"] is True
    assert (rows["c1"]["cx_desk"], rows["c1"]["cx_tier"]) == ("Macro", 1)
    assert rows["c2"]["cx_kyc_ok"] is False
    assert rows["c2"]["cx_aum_musd"] is None and rows["c2"]["cx_desk"] is None
    assert rows["c1"]["cx_desks"] == ["Macro", "Rates"]
    assert rows["c2"]["cx_desks"] is None
    assert rows["c1"]["cx_onboarded_at"] == utc(2024, 3, 1, 0, 30)
    with pytest.raises(InputError, match="cx_desk"):
        import_file(store, "contacts", write(tmp_path, "x.csv", "id,cx_desk\nc1,a\n"))


def test_not_utf8_is_a_file_error_with_the_line(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, "latin.csv", "id,first_name\nc1,Ann\nc2,Zo\xeb\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin\.csv:3: not valid UTF-8"):
        import_file(store, "contacts", path)
    assert count(store, "contacts") == 0
    bom = write(tmp_path, "bom.csv", "\ufeffid,first_name\nc1,Zoë\n".encode())
    assert run(store, "contacts", bom)[0] == ImportResult(1, 0, 0)
    assert contacts(store)["c1"]["first_name"] == "Zoë"


def test_multiline_quoted_fields_keep_physical_line_numbers(store: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.csv",
        "id,job_title,seniority\n"  # 1
        'c1,"Head of\nFixed Income",4\n'  # 2-3
        'c2,"Chief\r\nInvestment\nOfficer",x\n'  # 4-6, bad seniority
        "c3,Economist,3,extra\n"  # 7
        'c4,"CIO",5\n',  # 8
    )
    result, rejects = run(store, "contacts", path)
    assert result == ImportResult(2, 0, 2)
    assert [line for line, _ in rejects] == [4, 7]
    assert contacts(store)["c1"]["job_title"] == "Head of\nFixed Income"


def test_batch_boundaries(store: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "b.csv",
        "id,email\nc1,a\nc2,b\nc3,c\nc1,a2\n,x\nc4,d\nc5,e\nc3,c2\nc6,f\n",
    )
    result, rejects = run(store, "contacts", path, batch_size=2)
    assert result == ImportResult(inserted=6, updated=2, rejected=1)
    assert rejects == [(6, "missing id")]
    rows = contacts(store)
    assert len(rows) == 6
    assert (rows["c1"]["email"], rows["c3"]["email"]) == ("a2", "c2")
    assert run(store, "contacts", path, batch_size=2)[0] == ImportResult(0, 8, 1)


def test_format_option_and_unknown_extension(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path, "contacts.txt", '{"id": "c1"}\n')
    with pytest.raises(InputError, match=r"\.txt"):
        import_file(store, "contacts", path)
    assert import_file(store, "contacts", path, fmt="jsonl") == ImportResult(1, 0, 0)
    nd = write(tmp_path, "c.ndjson", '{"id": "c2"}\n')
    assert import_file(store, "contacts", nd) == ImportResult(1, 0, 0)
    with pytest.raises(InputError, match="unknown import kind"):
        import_file(store, "people", nd)
    with pytest.raises(InputError, match="no such file"):
        import_file(store, "contacts", tmp_path / "missing.csv")


def test_crlf_lines_and_publications_upsert(store: Store, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.csv",
        "id,title,published_at,sector\r\n"
        "p1,Oil,2024-05-01,Energy\r\n"
        "p2,Banks,not a date,Financials\r\n"
        "p3,Chips,2024-05-03,\r\n",
    )
    result, rejects = run(store, "publications", path)
    assert result == ImportResult(2, 0, 1)
    assert [line for line, _ in rejects] == [3]
    again = write(tmp_path, "p.jsonl", '{"id": "p1", "sector": "Utilities"}\n')
    assert run(store, "publications", again)[0] == ImportResult(0, 1, 0)
    p = store.tables.publications
    with store.read() as conn:
        row = conn.execute(select(p).where(p.c.id == "p1")).mappings().one()
    assert (row["title"], row["sector"], row["published_at"]) == (
        "Oil",
        "Utilities",
        utc(2024, 5, 1),
    )


def test_a_bad_jsonl_line_is_rejected_and_the_rest_loads(store: Store, tmp_path: Path) -> None:
    """Issue 17 item 11: one 100k-deep line (RecursionError) aborted a JSON Lines import
    and the valid rows after it were lost; an over-long integer gave a message about
    set_int_max_str_digits, and a lone surrogate failed in the store. Each bad line is
    rejected with its line number, and the import goes on."""
    path = write(
        tmp_path,
        "mixed.jsonl",
        '{"id": "c1", "region": "X"}\n'
        + "[" * 100_000
        + "]" * 100_000
        + "\n"
        + '{"id": "c3", "region": "Y"}\n'
        + '{"id": "c4", "seniority": '
        + "9" * 5000
        + "}\n"
        + '{"id": "c5", "region": "EM\\ud800"}\n'
        + '{"id": "c6\\udfff"}\n'
        + '{"id": "c7", "region": "Z"}\n',
    )
    result, rejects = run(store, "contacts", path)
    assert result == ImportResult(3, 0, 4)
    assert set(contacts(store)) == {"c1", "c3", "c7"}
    reasons = dict(rejects)
    assert sorted(reasons) == [2, 4, 5, 6]
    assert reasons[2] == "invalid JSON: nested too deeply (a row is one flat object)"
    assert reasons[4] == "invalid JSON: a number of more than 4,300 digits"
    assert reasons[5].startswith("region: invalid character U+D800 (a lone surrogate)")
    assert reasons[6].startswith("id: invalid character U+DFFF (a lone surrogate) at character 3")


def test_importing_a_directory_says_so(store: Store, tmp_path: Path) -> None:
    """Issue 17 item 11: importing a directory said `no such file`."""
    folder = tmp_path / "contacts.csv"
    folder.mkdir()
    for target in (folder, tmp_path):
        with pytest.raises(InputError, match="is a directory, not a file"):
            import_file(store, "contacts", target)
    with pytest.raises(InputError, match="no such file"):
        import_file(store, "contacts", tmp_path / "missing.csv")


def test_a_csv_integer_of_5000_digits_is_a_bad_row(store: Store, tmp_path: Path) -> None:
    """Issue 17 item 11: a CSV cell of 5,000 digits in an int column aborted the import
    with `unexpected ValueError ... set_int_max_str_digits`; it is a bad row."""
    path = write(tmp_path, "c.csv", "id,seniority\nc1," + "9" * 5000 + "\nc2,3\n")
    result, rejects = run(store, "contacts", path)
    assert result == ImportResult(1, 0, 1)
    assert rejects == [(2, f"seniority: integer '{'9' * 37}...' is out of range")]
