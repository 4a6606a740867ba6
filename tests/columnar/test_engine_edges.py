"""The columnar engine when its copy cannot be used as it is: damaged files
are rebuilt, a copy that cannot be written hands the work to the local engine
(saying why, and recording it on the job), doctor names what is wrong, and a
preview's counts are of one moment even when a write falls between its reads.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from personatag.config import Settings
from personatag.definitions.attributes import add_attribute
from personatag.doctor import check_columnar
from personatag.domain import Action, PinKind
from personatag.engines.columnar import batch
from personatag.engines.columnar.copy import MANIFEST, folder_of
from personatag.engines.columnar.sets import PersonaSets
from personatag.importer import import_file
from personatag.jobs.repository import get_job
from personatag.memberships.pins import pin
from personatag.store import Store, open_store
from personatag.tagging.adhoc import AdhocRequest, run_adhoc
from personatag.tagging.preview import preview
from tests.columnar.test_engine import END, members, pop, settings_for, tag  # noqa: F401

EXPR = 'region = "EMEA" and seniority >= 2'


def both(store: Store, s: Settings, expr: str = EXPR, **kw: Any) -> tuple[dict, dict]:
    kw.setdefault("as_of", END)
    return (
        preview(store, expr, engine="local", settings=s, **kw),
        preview(store, expr, engine="columnar", settings=s, **kw),
    )


def built(store: Store, s: Settings) -> Path:
    """The copy's folder, once a preview built it."""
    preview(store, EXPR, engine="columnar", settings=s, as_of=END)
    folder = folder_of(s, store)
    assert (folder / MANIFEST).exists()
    return folder


def manifest(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / MANIFEST).read_text()))


@pytest.mark.parametrize("damage", ["not json", "{}", '{"format": 1}', "[1, 2]", ""])
def test_a_damaged_manifest_is_rebuilt(pop: Store, tmp_path: Path, damage: str) -> None:  # noqa: F811
    s = settings_for(tmp_path)
    folder = built(pop, s)
    base_before = manifest(folder)["base"]
    (folder / MANIFEST).write_text(damage)
    local, col = both(pop, s)
    assert col == local
    assert manifest(folder)["base"] != base_before  # rebuilt, the damaged base dropped
    assert not (folder / base_before).exists()


@pytest.mark.parametrize("how", ["truncated", "missing", "garbage"])
@pytest.mark.parametrize("which", ["contacts.pk.npy", "values", "dict.txt", "meta.json"])
def test_damaged_or_missing_files_are_rebuilt(
    pop: Store,  # noqa: F811
    tmp_path: Path,
    how: str,
    which: str,
) -> None:
    s = settings_for(tmp_path)
    folder = built(pop, s)
    base = folder / manifest(folder)["base"]
    # region's column files are read lazily, as a criterion evaluates
    region = [name for name, _ in manifest(folder)["fields"]].index("region")
    path = base / {
        "values": f"contacts.{region}.values.npy",
        "dict.txt": f"contacts.{region}.dict.txt",
    }.get(which, which)
    assert path.exists(), sorted(p.name for p in base.iterdir())
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: max(len(data) // 2, 1)])
    elif how == "missing":
        path.unlink()
    else:
        path.write_bytes(b"\x00garbage" * 3)
    # a new process finds it so (nothing cached)
    from personatag.engines.columnar import copy

    copy._CACHE.clear()
    local, col = both(pop, s)
    assert col == local
    assert manifest(folder)["base"] != base.name  # rebuilt
    for expr in ('job_title ilike "%chief%"', "seniority between 2 and 4", 'region = "AMER"'):
        local, col = both(pop, s, expr, persona="emea")
        assert col == local, expr


def _unwritable(s: Settings) -> None:
    """A data directory where the copy cannot be written: its folder's place
    is taken by a file (root may write any folder, but not into a file)."""
    s.data_dir.mkdir(parents=True, exist_ok=True)
    (s.data_dir / "columnar").write_text("not a folder")


def test_an_unwritable_copy_previews_on_the_local_engine(
    pop: Store,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = settings_for(tmp_path)
    tag(pop, s, "emea", 'region = "EMEA"', "local")
    pin(pop, "emea", "c00000002", PinKind.OUT, actor="t")
    _unwritable(s)
    for kw in ({}, {"persona": "emea"}, {"persona": "emea", "action": "untag"}):
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            local, col = both(pop, s, **kw)
        assert col == local
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(
            "ran on the local engine" in m and "columnar copy cannot be used" in m for m in warned
        ), warned
    # persona(...) reads the sets, kept under the same folder
    local, col = both(pop, s, 'persona("emea") and seniority >= 3')
    assert col == local


def test_a_tag_that_fell_back_records_the_engine_that_ran_it(
    pop: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = settings_for(tmp_path)
    tag(pop, s, "target", EXPR, "local")
    expected = members(pop, "target")
    _unwritable(s)
    out = tag(pop, s, "emea", EXPR, "columnar")
    assert out["engine"] == "local"
    assert "columnar copy cannot be used" in out["warnings"][0]
    assert members(pop, "emea") == expected
    job = get_job(pop, out["request_id"])
    assert job.engine == "local"
    assert job.counts is not None and "columnar copy cannot be used" in job.counts["warnings"][0]
    # a job that needed no fallback records nothing more
    (s.data_dir / "columnar").unlink()
    out = tag(pop, s, "senior", EXPR, "columnar")
    assert "warnings" not in out and "engine" not in out
    assert get_job(pop, out["request_id"]).engine == "columnar"


def test_a_full_disk_previews_and_tags_on_the_local_engine(pg_store: Store, tmp_path: Path) -> None:
    """A real write limit (RLIMIT_FSIZE) on a CLI process: the copy's files
    cannot be written; the store (PostgreSQL, another process) is fine."""
    from personatag.generate.run import generate

    generate(pg_store, contacts=300, seed=2, end=END)
    from personatag.definitions.personas import add_persona

    add_persona(pg_store, "emea", name="EMEA", category="t")
    env = {
        "PERSONATAG_DATA_DIR": str(tmp_path / "data"),
        "PERSONATAG_STORE_URL": pg_store.engine.url.render_as_string(hide_password=False),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": ":".join(sys.path),
        "PYTHONDONTWRITEBYTECODE": "1",  # no half-written .pyc under the limit
    }

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "personatag.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            preexec_fn=limited,
            timeout=120,
            check=False,
        )

    got = cli("preview", "--expr", EXPR, "--as-of", END.isoformat(), "--json")
    assert got.returncode == 0, got.stderr
    assert "Traceback" not in got.stderr
    assert "ran on the local engine" in got.stderr
    s = Settings(data_dir=tmp_path / "other")
    assert json.loads(got.stdout) == preview(pg_store, EXPR, engine="local", settings=s, as_of=END)
    got = cli("tag", "--persona", "emea", "--expr", EXPR, "--as-of", END.isoformat())
    assert got.returncode == 0, got.stderr
    t = pg_store.tables
    with pg_store.read() as conn:
        assert list(conn.scalars(select(t.jobs.c.engine))) == ["local"]


def test_an_attribute_declared_by_another_process_is_read(
    pop: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = settings_for(tmp_path)
    built(pop, s)  # this process holds the copy (cached)
    other = open_store(pop.engine.url.render_as_string(hide_password=False))
    try:
        add_attribute(other, "desk", "string")
        rows = tmp_path / "desk.csv"
        rows.write_text("id,desk\nc00000004,rates\nc00000006,rates\nc00000008,fx\n")
        import_file(other, "contacts", rows)
    finally:
        other.dispose()
    local, col = both(pop, s, 'desk = "rates" or desk is null and seniority > 3')
    assert col == local
    assert col["count"] >= 2


def test_doctor_names_a_damaged_manifest(pop: Store, tmp_path: Path) -> None:  # noqa: F811
    url = pop.engine.url.render_as_string(hide_password=False)
    s = Settings(data_dir=tmp_path / "data", store_url=url)
    folder = built(pop, s)
    assert check_columnar(s).status == "ok"
    for damage in ("not json", "{}", '{"offset": "x"}'):
        (folder / MANIFEST).write_text(damage)
        check = check_columnar(s)
        assert check.status == "fail", damage
        assert "damaged" in check.detail and str(folder / MANIFEST) in check.detail
        assert "rebuilds the copy" in (check.fix or "")
        assert "unexpected" not in check.detail
    # and a preview mends it
    preview(pop, EXPR, settings=s, as_of=END)
    assert check_columnar(s).status == "ok"


@pytest.mark.parametrize("when", ["before the sets refresh", "after a set is read"])
def test_a_write_between_the_reads_of_a_preview(
    pop: Store,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """A pin-out (which also ends the contact's membership) commits between
    the preview's reads: the answer must be one a single moment had. Read
    apart, the holders and the pins disagree on the contact: counted as
    held and not pinned (would_enter 1) or held and pinned (would_enter -1)."""
    s = settings_for(tmp_path)
    tag(pop, s, "target", EXPR, "local")
    held = sorted(members(pop, "target"))
    t = pop.tables
    with pop.read() as conn:
        victim = conn.scalar(select(t.contacts.c.id).where(t.contacts.c.pk == held[0]))
    before = preview(pop, EXPR, engine="local", settings=s, persona="target", as_of=END)
    preview(pop, EXPR, engine="columnar", settings=s, persona="target", as_of=END)  # warm
    fired: list[bool] = []

    def write() -> None:
        if not fired:
            fired.append(True)
            pin(pop, "target", victim, PinKind.OUT, actor="t")  # commits now

    if when == "before the sets refresh":
        refresh = PersonaSets.refresh

        def write_then_refresh(self: PersonaSets) -> PersonaSets:
            write()
            return refresh(self)

        monkeypatch.setattr(PersonaSets, "refresh", write_then_refresh)
    else:
        get_at = PersonaSets.get_at

        def read_then_write(self: PersonaSets, key: str) -> Any:
            got = get_at(self, key)
            write()
            return got

        monkeypatch.setattr(PersonaSets, "get_at", read_then_write)
    col = preview(pop, EXPR, engine="columnar", settings=s, persona="target", as_of=END)
    assert fired
    after = preview(pop, EXPR, engine="local", settings=s, persona="target", as_of=END)
    assert col == after == before  # every contact matched: held or blocked, none enters
    assert col["would_enter"] == 0


def test_a_contact_change_between_the_reads_of_a_preview(
    pop: Store,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A contact write lands after the copy caught up and before the pins are
    read: the preview is taken again on the copy caught up with it."""
    from personatag.contacts import set_contact

    s = settings_for(tmp_path)
    tag(pop, s, "target", EXPR, "local")
    preview(pop, EXPR, engine="columnar", settings=s, persona="target", as_of=END)  # warm
    rows = batch.row_mask
    fired: list[bool] = []

    def then_write(frame: Any, pks: Any) -> Any:
        if not fired:
            fired.append(True)
            set_contact(pop, "c00000011", {"region": "EMEA", "seniority": 9})
            pin(pop, "target", "c00000011", PinKind.OUT, actor="t")
        return rows(frame, pks)

    monkeypatch.setattr(batch, "row_mask", then_write)
    col = preview(pop, EXPR, engine="columnar", settings=s, persona="target", as_of=END)
    assert fired
    assert col == preview(pop, EXPR, engine="local", settings=s, persona="target", as_of=END)


def test_untag_on_a_rebuilt_copy(pop: Store, tmp_path: Path) -> None:  # noqa: F811
    s = settings_for(tmp_path)
    for persona, engine in (("emea", "columnar"), ("senior", "local")):
        tag(pop, s, persona, 'region = "EMEA"', engine)
    (folder_of(s, pop) / MANIFEST).write_text("{")
    for persona, engine in (("emea", "columnar"), ("senior", "local")):
        req = AdhocRequest(
            persona=persona, action=Action.UNTAG, expr=EXPR, as_of=END, engine=engine
        )
        out = run_adhoc(pop, req, s).as_json()
        assert "warnings" not in out
    assert members(pop, "emea") == members(pop, "senior")
    assert members(pop, "emea")


def test_doctor_names_a_copy_that_cannot_be_written(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "data")
    _unwritable(s)
    check = check_columnar(s)
    assert check.status == "fail"
    assert "is a file, not a folder" in check.detail and "local engine" in check.detail
    assert "PERSONATAG_DATA_DIR" in (check.fix or "")


def test_a_large_sample_reads_the_ids_in_chunks(
    pop: Store,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A --sample larger than a statement's bound parameters (65,535 on
    PostgreSQL) is read in chunks: shown here with small chunks."""
    from personatag.tagging import preview as module

    monkeypatch.setattr(module, "_SAMPLE_CHUNK", 7)
    s = settings_for(tmp_path)
    local, col = both(pop, s, "seniority >= 0 or seniority is null", sample_size=400)
    assert col == local
    assert len(col["sample"]) == col["count"] == 400


def test_a_request_file_that_fell_back_says_so_in_its_summary(
    pop: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    from personatag.buckets import open_buckets
    from personatag.requests.dispatcher import Dispatcher

    s = settings_for(tmp_path)
    _unwritable(s)
    b = open_buckets(s)
    body = {"version": 1, "request_id": "f1", "persona": "emea", "action": "tag", "expr": EXPR}
    b["requests"].put("f1.json", json.dumps(body).encode())
    d = Dispatcher(pop, b, s, workers=1)
    assert d.scan() == 1
    d.drain()
    d.close()
    summary = json.loads(b["results"].get("f1/summary.json"))
    assert summary["status"] == "succeeded" and summary["engine"] == "local"
    assert "columnar copy cannot be used" in summary["warnings"][0]
    assert summary["counts"]["tagged"] == len(members(pop, "emea")) > 0


# local: staying, held and blocked counts; columnar: the pins in, out
@pytest.mark.parametrize(
    ("engine", "nth"), [("local", 1), ("local", 2), ("local", 3), ("columnar", 1), ("columnar", 2)]
)
def test_a_write_between_the_statements_of_a_preview(
    pop: Store,  # noqa: F811
    tmp_path: Path,
    engine: str,
    nth: int,
) -> None:
    """A pin-out commits right after the nth statement of the preview that
    reads the holders or the pins: its later statements must not see it
    (PostgreSQL's READ COMMITTED would: one snapshot per statement), or the
    contact is counted both held and blocked."""
    from sqlalchemy import event

    s = settings_for(tmp_path)
    tag(pop, s, "target", EXPR, "local")
    t = pop.tables
    with pop.read() as conn:
        victim = conn.scalar(
            select(t.contacts.c.id).where(t.contacts.c.pk == min(members(pop, "target")))
        )
    before = preview(pop, EXPR, engine="local", settings=s, persona="target", as_of=END)
    fired: list[bool] = []
    seen: list[str] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        read = ("memberships", "membership_rows", "pins")
        if fired or not any(name in statement for name in read):
            return
        seen.append(statement)
        if len(seen) == nth:
            fired.append(True)
            pin(pop, "target", victim, PinKind.OUT, actor="t")

    preview(pop, EXPR, engine=engine, settings=s, persona="target", as_of=END)  # warm
    event.listen(pop.engine, "after_cursor_execute", after)
    try:
        got = preview(pop, EXPR, engine=engine, settings=s, persona="target", as_of=END)
    finally:
        event.remove(pop.engine, "after_cursor_execute", after)
    assert fired
    assert got == before  # every contact matched: held or blocked, none enters


def test_an_error_that_is_not_the_copys_does_not_rebuild_it(
    pop: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Only a file that cannot be read rebuilds the copy (minutes at 10M): any
    other failure while evaluating is the caller's, and the copy stays."""
    s = settings_for(tmp_path)
    folder = built(pop, s)
    base = manifest(folder)["base"]

    def fails(frame: Any) -> None:
        raise ValueError("not about files")

    with pytest.raises(ValueError, match="not about files"):
        batch.with_frame(pop, s, fails)
    assert manifest(folder)["base"] == base
