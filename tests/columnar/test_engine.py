"""The columnar engine as the product uses it: previews and ad hoc tags agree
with the local engine (SQL in the store), and see every committed change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from personatag.config import Settings
from personatag.contacts import add_events, set_contact
from personatag.definitions.personas import add_persona
from personatag.domain import Action, PinKind
from personatag.engines import engine_names, get_engine
from personatag.engines.columnar.batch import ColumnarEngine
from personatag.errors import InputError
from personatag.generate.run import generate
from personatag.memberships.pins import pin
from personatag.store import Store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from personatag.tagging.preview import preview

END = datetime(2026, 6, 30, 12, tzinfo=UTC)

EXPRS = [
    'region = "EMEA" and seniority >= 3',
    'region = "emea"',  # nothing: the ignoring-case count and suggestion
    'job_title ilike "%chief%" or firm_type in ("Hedge Fund", "hedge fund")',
    'count(read where sector = "Energy", 90d) >= 2',
    'count(read where sector = "Energy", 90d) >= 1 and not region = "AMER"',
    "count(login, 30d) >= 1 or seniority between 2 and 4",
    'persona("emea") and not persona("senior")',
    'persona("senior") or interests contains "Credit"',
    "seniority > 100",
]
HOW = [("tag", "adhoc", "keep"), ("untag", "adhoc", "keep"), ("tag", "ongoing", "remove")]


@pytest.fixture
def pop(store: Store, tmp_path: Path) -> Store:
    generate(store, contacts=400, seed=4, end=END)
    for key in ("emea", "senior", "target"):
        add_persona(store, key, name=key.title(), category="test")
    return store


def settings_for(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


def tag(store: Store, s: Settings, persona: str, expr: str, engine: str, **kw: object) -> dict:
    req = AdhocRequest(
        persona=persona, action=Action.TAG, expr=expr, as_of=END, engine=engine, **kw
    )  # type: ignore[arg-type]
    return run_adhoc(store, req, s).as_json()


def members(store: Store, persona: str) -> set[int]:
    t = store.tables
    with store.read() as conn:
        p = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == persona))
        return set(
            conn.scalars(select(t.memberships.c.contact_pk).where(t.memberships.c.persona_pk == p))
        )


def test_it_is_registered_and_the_default(pop: Store, tmp_path: Path) -> None:
    assert "columnar" in engine_names()
    assert isinstance(get_engine("columnar", pop, settings_for(tmp_path)), ColumnarEngine)
    assert Settings().batch_engine == "columnar"
    with pytest.raises(InputError, match="previews run on the columnar or the local engine"):
        preview(pop, "seniority > 1", engine="flink", settings=settings_for(tmp_path))


def test_previews_agree_with_the_local_engine(pop: Store, tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    tag(pop, s, "emea", 'region = "EMEA"', "local")
    tag(pop, s, "senior", "seniority >= 6", "local")
    tag(pop, s, "target", "seniority >= 5", "local")
    # pins both ways, on matched and unmatched contacts
    for cid, kind in (
        ("c00000001", PinKind.IN),
        ("c00000002", PinKind.OUT),
        ("c00000009", PinKind.OUT),
    ):
        pin(pop, "target", cid, kind, actor="t")
    for expr in EXPRS:
        for persona in (None, "target", "emea"):
            for action, mode, exit_policy in HOW:
                kw = dict(
                    persona=persona, as_of=END, action=action, mode=mode, exit_policy=exit_policy
                )
                local = preview(pop, expr, engine="local", settings=s, **kw)  # type: ignore[arg-type]
                col = preview(pop, expr, engine="columnar", settings=s, **kw)  # type: ignore[arg-type]
                assert col == local, (expr, persona, action, mode)
    assert preview(pop, 'region = "emea"', settings=s)["count_ignoring_case"] > 0


def test_tags_agree_with_the_local_engine(pop: Store, tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    strip = {"request_id", "job", "engine", "persona", "timings", "started_at", "finished_at"}
    for i, expr in enumerate(EXPRS[:6]):
        a, b = f"a{i}", f"b{i}"  # one persona per engine
        for key in (a, b):
            add_persona(pop, key, name=key, category="t")
            pin(pop, key, "c00000003", PinKind.OUT, actor="t")
        out_local = tag(pop, s, a, expr, "local")
        out_columnar = tag(pop, s, b, expr, "columnar")
        assert {k: v for k, v in out_local.items() if k not in strip} == {
            k: v for k, v in out_columnar.items() if k not in strip
        }, expr
        assert members(pop, a) == members(pop, b), expr
        # and an untag of part of them
        for persona, engine in ((a, "local"), (b, "columnar")):
            req = AdhocRequest(
                persona=persona, action=Action.UNTAG, expr="seniority < 4", as_of=END, engine=engine
            )
            run_adhoc(pop, req, s)
        assert members(pop, a) == members(pop, b), expr


def test_read_your_writes(pop: Store, tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    expr = 'region = "Mars" and seniority >= 0'
    assert preview(pop, expr, settings=s)["count"] == 0  # builds the copy
    set_contact(pop, "c00000005", {"region": "Mars"})
    after = preview(pop, expr, settings=s)
    assert (after["count"], after["sample"]) == (1, ["c00000005"])
    # reads: a new publication-free window count moves at once
    energy = 'count(read where sector = "Energy", 1d) >= 1'
    before = preview(pop, energy, settings=s, as_of=END + timedelta(days=3))["count"]
    assert before == 0
    with pop.read() as conn:
        t = pop.tables
        pub = conn.scalar(select(t.publications.c.id).where(t.publications.c.sector == "Energy"))
    add_events(pop, "c00000007", reads=[(pub, END + timedelta(days=3))])
    got = preview(pop, energy, settings=s, as_of=END + timedelta(days=3))
    assert (got["count"], got["sample"]) == (1, ["c00000007"])
    # personas: a tag is seen by the next persona(...) preview
    assert preview(pop, 'persona("emea")', settings=s)["count"] == 0
    tag(pop, s, "emea", 'region = "EMEA"', "columnar")
    assert preview(pop, 'persona("emea")', settings=s)["count"] == len(members(pop, "emea")) > 0
    # and a tag on the columnar engine sees a change made just before it
    set_contact(pop, "c00000011", {"region": "Mars"})
    out = tag(pop, s, "target", 'region = "Mars"', "columnar")
    assert out["tagged"] == 2


def test_a_copy_of_the_first_layout_is_removed(pop: Store, tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    root = s.data_dir / "columnar"
    (root / "base-0123").mkdir(parents=True)
    (root / "sets").mkdir()
    (root / "MANIFEST.json").write_text("{}")
    (root / "lock").write_text("")
    assert preview(pop, "seniority >= 0", settings=s)["count"] > 0
    assert sorted(p.name for p in root.iterdir()) == [copy_folder_name(pop)]


def copy_folder_name(store: Store) -> str:
    from personatag.engines.columnar.folders import store_key

    return store_key(store)


def test_doctor_reports_the_copy(pop: Store, tmp_path: Path) -> None:
    from personatag.doctor import check_columnar

    s = Settings(data_dir=tmp_path / "data", store_url=pop.engine.url.render_as_string(False))
    first = check_columnar(s)
    assert (first.status, "not built yet" in first.detail) == ("ok", True)
    preview(pop, "seniority >= 0", settings=s)
    set_contact(pop, "c00000005", {"region": "Mars"})
    built = check_columnar(s)
    assert built.status == "ok" and "MiB" in built.detail, built.detail
    assert "saved 1 change behind the feed" in built.detail, built.detail
    preview(pop, "seniority >= 0", settings=s)  # caught up; saved only every 2,000 changes
    assert "saved 1 change behind" in check_columnar(s).detail
