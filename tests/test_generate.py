"""The synthetic population, on real SQLite and real PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from personatag.errors import InputError
from personatag.generate import GenerateResult, generate
from personatag.generate.vocab import COUNTRIES, REGIONS
from personatag.importer import ImportResult, import_file
from personatag.store import Store, open_store

END = datetime(2025, 6, 30, tzinfo=UTC)


def snapshot(store: Store) -> dict[str, list[Any]]:
    t = store.tables
    out: dict[str, list[Any]] = {}
    with store.read() as conn:
        for table, order in (
            (t.contacts, [t.contacts.c.pk]),
            (t.publications, [t.publications.c.pk]),
            (t.reads, list(t.reads.primary_key.columns)),
            (t.logins, list(t.logins.primary_key.columns)),
        ):
            out[table.name] = [tuple(r) for r in conn.execute(select(table).order_by(*order))]
    return out


def clear(store: Store) -> None:
    t = store.tables
    with store.write() as conn:
        for table in (t.reads, t.logins, t.contacts, t.publications):
            conn.execute(delete(table))


def test_small_population_is_consistent(store: Store, tmp_path: Path) -> None:
    messages: list[str] = []
    result = generate(store, contacts=1500, seed=7, end=END, progress=messages.append)
    assert isinstance(result, GenerateResult)
    assert (result.contacts, result.publications) == (1500, 200)
    assert result.reads > 5 * 1500
    assert result.logins > 0
    assert any("contacts 1,500/1,500" in m for m in messages)
    data = snapshot(store)
    assert len(data["contacts"]) == 1500
    assert len(data["reads"]) == result.reads
    assert len(data["logins"]) == result.logins
    c = store.tables.contacts.c
    cols = [col.name for col in store.tables.contacts.columns]
    rows = [dict(zip(cols, r, strict=True)) for r in data["contacts"]]

    assert rows[0]["id"] == "c00000001"
    assert all(re.fullmatch(r"c\d{8}", r["id"]) for r in rows)
    assert data["publications"][0][1] == "p000001"

    # realistic gaps, but most values present
    for name in ("job_title", "country", "seniority", "interests", "email", "last_login_at"):
        missing = sum(r[name] is None for r in rows)
        assert 0 < missing < len(rows) // 2, name
    # country belongs to the region
    for r in rows:
        if r["region"] is not None and r["country"] is not None:
            assert r["country"] in COUNTRIES[r["region"]]
    assert {r["region"] for r in rows} - {None} == set(REGIONS)
    for r in rows:
        if r["interests"] is not None:
            assert len(r["interests"]) in range(1, 5)
        if r["email"] is not None:
            assert re.fullmatch(r"[a-z0-9.]+@[a-z0-9]+\.com", r["email"]), r["email"]
        assert r["created_at"] <= r["updated_at"] <= END

    # reads and logins reference stored rows; timestamps stay before `end`
    pubs = {p[0]: p for p in data["publications"]}
    created = {r["pk"]: r["created_at"] for r in rows}
    for contact_pk, read_at, pub_pk in data["reads"]:
        assert contact_pk in created and pub_pk in pubs
        assert pubs[pub_pk][3] <= read_at < END
        assert read_at >= created[contact_pk]
    newest: dict[int, datetime] = {}
    for contact_pk, login_at in data["logins"]:
        assert contact_pk in created
        newest[contact_pk] = max(login_at, newest.get(contact_pk, login_at))
    assert {r["pk"]: r["last_login_at"] for r in rows if r["last_login_at"]} == newest

    # a skewed distribution: most read a few, some read a lot
    with store.read() as conn:
        per_contact = sorted(
            conn.execute(
                select(func.count()).select_from(store.tables.reads).group_by("contact_pk")
            ).scalars()
        )
        seniority_of_cio = set(
            conn.execute(select(c.seniority).where(c.job_title == "Chief Investment Officer"))
            .scalars()
            .all()
        )
    assert per_contact[len(per_contact) // 2] < 15
    assert per_contact[-1] > 60
    assert seniority_of_cio <= {5, None}

    with pytest.raises(InputError, match="already has contacts"):
        generate(store, contacts=10, end=END)

    # generated primary keys leave the sequences ready for ordinary inserts
    contacts_csv = tmp_path / "more.csv"
    contacts_csv.write_text("id,region\nz1,EMEA\n", encoding="utf-8")
    assert import_file(store, "contacts", contacts_csv) == ImportResult(1, 0, 0)
    pubs_csv = tmp_path / "pubs.csv"
    pubs_csv.write_text("id,title\nz1,New\n", encoding="utf-8")
    assert import_file(store, "publications", pubs_csv) == ImportResult(1, 0, 0)
    with store.read() as conn:
        new_pk = conn.execute(select(c.pk).where(c.id == "z1")).scalar_one()
    assert new_pk == 1501


def test_same_seed_same_population_different_seed_differs(store: Store) -> None:
    generate(store, contacts=700, seed=3, end=END)
    first = snapshot(store)
    clear(store)
    generate(store, contacts=700, seed=3, end=END)
    assert snapshot(store) == first
    clear(store)
    generate(store, contacts=700, seed=4, end=END)
    other = snapshot(store)
    assert other["contacts"] != first["contacts"]
    assert other["reads"] != first["reads"]


def test_rejects_bad_arguments(store: Store) -> None:
    with pytest.raises(InputError, match="contacts"):
        generate(store, contacts=0)
    with pytest.raises(InputError, match="seed"):
        generate(store, contacts=5, seed=-1)
    with pytest.raises(InputError, match="reports"):
        generate(store, contacts=5, reports=0)


def test_reports_sets_the_catalogue_size(store_url: str, tmp_path: Path) -> None:
    from tests.test_cli import CLI

    cli = CLI(store_url, tmp_path)
    bad = cli("generate", "--contacts", "30", "--reports", "1000000", ok=False)
    assert bad.returncode != 0 and "--reports must be between 1 and 999,999" in bad.stderr
    assert "Traceback" not in bad.stderr
    out = cli(
        "generate", "--contacts", "30", "--seed", "2", "--end", "2025-06-30", "--reports", "17"
    )
    assert out.stdout.startswith("generated 30 contacts, 17 publications, ")
    st = open_store(store_url)
    with st.read() as conn:
        t = st.tables
        assert conn.execute(select(func.count()).select_from(t.publications)).scalar_one() == 17
        assert conn.execute(select(func.count()).select_from(t.contacts)).scalar_one() == 30
        reads = conn.execute(select(func.count()).select_from(t.reads)).scalar_one()
    st.dispose()
    assert reads > 0
