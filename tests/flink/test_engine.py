"""The flink engine end to end on the shared test cluster: the CLI, request files
through the dispatcher, job records, failures with Flink's root cause, deadlines."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

import personatag
from personatag.buckets import Buckets, open_buckets
from personatag.config import Settings
from personatag.definitions.personas import add_persona
from personatag.engines.flink.deploy import deploy
from personatag.engines.flink.runtime import submitter
from personatag.engines.flink.runtime.rest import FlinkRest
from personatag.engines.flink.snapshot import MANIFEST
from personatag.generate.run import generate
from personatag.requests.dispatcher import Dispatcher
from personatag.store import Store, open_store

from .engine_support import flink_python, flink_settings

pytestmark = pytest.mark.slow

BEHAVIOURAL = (
    'count(read where sector = "Energy", 90d) >= 2 and region in ("EMEA", "APAC") '
    'or count(login, 30d) >= 6 and job_title ilike "%chief%"'
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Buckets, Settings]]:
    settings = flink_settings(tmp_path_factory.mktemp("flink-engine"), job_deadline_s=300.0)
    store = open_store(settings.resolved_store_url, create=True)
    generate(store, contacts=4000, seed=7)
    for key in ("energy", "energy-local", "cio-local", "cio-flink", "slow"):
        add_persona(store, key, name=key, category="test", actor="test")
    buckets = open_buckets(settings)
    deploy(buckets, properties={"flink.parallelism": 1}, actor="test")
    yield store, buckets, settings
    store.dispose()


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")},
        "PERSONATAG_DATA_DIR": str(settings.data_dir),
        "PERSONATAG_FLINK_URL": str(settings.flink_url),
        "PERSONATAG_FLINK_PYTHON": str(flink_python()),
    }
    return subprocess.run(
        [sys.executable, "-m", "personatag.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def entered(store: Store, persona: str) -> set[str]:
    """Contact ids the membership log says entered `persona` (bulk entries decoded)."""
    from personatag.store.ids import decode_ids

    t = store.tables
    with store.read() as conn:
        ppk = conn.scalar(select(t.personas.c.pk).where(t.personas.c.key == persona))
        ids = dict(conn.execute(select(t.contacts.c.pk, t.contacts.c.id)).all())
        out: set[str] = set()
        for cpk, blob, change in conn.execute(
            select(
                t.membership_log.c.contact_pk,
                t.membership_log.c.bulk_ids,
                t.membership_log.c.change,
            ).where(t.membership_log.c.persona_pk == ppk)
        ):
            pks = decode_ids(blob).tolist() if blob is not None else [cpk]
            for pk in pks:
                if change == "enter":
                    out.add(ids[pk])
                else:
                    out.discard(ids[pk])
    return out


def test_tag_on_flink_matches_tag_on_local(env: tuple[Store, Buckets, Settings]) -> None:
    store, _, settings = env
    as_of = "2026-11-01T00:00:00Z"
    local = cli(
        settings,
        "tag",
        "--persona",
        "energy-local",
        "--expr",
        BEHAVIOURAL,
        "--as-of",
        as_of,
        "--json",
    )
    assert local.returncode == 0, local.stderr
    flink = cli(
        settings,
        "tag",
        "--persona",
        "energy",
        "--expr",
        BEHAVIOURAL,
        "--engine",
        "flink",
        "--as-of",
        as_of,
        "--json",
    )
    assert flink.returncode == 0, flink.stderr
    a, b = json.loads(local.stdout), json.loads(flink.stdout)
    assert a["tagged"] == b["tagged"] > 20
    assert entered(store, "energy") == entered(store, "energy-local")
    # persona(...) reads the memberships just written; untag through Flink too.
    untag = cli(
        settings,
        "untag",
        "--persona",
        "energy",
        "--engine",
        "flink",
        "--expr",
        'persona("energy") and not persona("cio-flink") and seniority >= 3',
        "--json",
    )
    assert untag.returncode == 0, untag.stderr
    gone = json.loads(untag.stdout)["untagged"]
    assert 0 < gone < b["tagged"]
    assert len(entered(store, "energy")) == b["tagged"] - gone
    # the job row names the Flink job and the bundle it ran
    jobs = json.loads(cli(settings, "jobs", "list", "--json").stdout)["jobs"]
    flink_jobs = [j for j in jobs if j["engine"] == "flink"]
    assert len(flink_jobs) == 2
    shown = json.loads(cli(settings, "jobs", "show", str(flink_jobs[0]["id"]), "--json").stdout)
    assert len(shown["engine_ref"]) == 32 and shown["bundle_version"]
    state = FlinkRest(str(settings.flink_url)).job(shown["engine_ref"])["state"]
    assert state == "FINISHED"


def test_request_file_with_engine_flink_through_the_dispatcher(
    env: tuple[Store, Buckets, Settings],
) -> None:
    store, buckets, settings = env
    expr = 'job_title ilike "%chief%" and interests contains_any ("Energy", "Rates")'
    for persona, engine in (("cio-flink", "flink"), ("cio-local", "local")):
        body = {
            "version": 1,
            "request_id": f"r-{engine}",
            "submitted_by": "test",
            "persona": persona,
            "action": "tag",
            "engine": engine,
            "dry_run": False,
            "expr": expr,
        }
        buckets["requests"].put(f"r-{engine}.json", json.dumps(body).encode())
    d = Dispatcher(store, buckets, settings, workers=2)
    d.scan()
    d.drain()
    d.close()
    summaries = {
        e: json.loads(buckets["results"].get(f"r-{e}/summary.json")) for e in ("flink", "local")
    }
    assert summaries["flink"]["status"] == "succeeded", summaries["flink"]
    assert summaries["flink"]["engine"] == "flink"
    assert summaries["flink"]["counts"] == summaries["local"]["counts"]
    assert summaries["flink"]["counts"]["tagged"] > 0

    def changes(engine: str) -> set[str]:
        lines = gzip.decompress(buckets["results"].get(f"r-{engine}/changes.csv.gz")).decode()
        return {line.split(",")[0] for line in lines.splitlines()[1:]}

    assert changes("flink") == changes("local") == entered(store, "cio-flink")


def test_a_failing_flink_job_reports_its_root_cause(env: tuple[Store, Buckets, Settings]) -> None:
    _, buckets, settings = env
    expr = "seniority >= 4 and firm_type is not null"
    # Run once so the snapshot exists, then break one of its part files: the
    # next run reuses it (the store did not change) and Flink fails to parse it.
    ok = cli(
        settings,
        "tag",
        "--persona",
        "slow",
        "--expr",
        expr,
        "--engine",
        "flink",
        "--dry-run",
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    staging = buckets["staging"]
    manifests = [k for k in staging.list("snapshots/") if k.count("/") == 1]
    current = [json.loads(staging.get(k)) for k in manifests]
    newest = max(current, key=lambda m: m["used_at"])
    staging.put(newest["folder"] + "part-00000.json", b'{"pk": 1, "seniority": "not a number"\n')
    bad = cli(settings, "tag", "--persona", "slow", "--expr", expr, "--engine", "flink", "--json")
    assert bad.returncode == 1
    error = json.loads(bad.stdout)["error"]
    assert error.startswith("Flink job ") and " failed: " in error
    assert "JSON" in error or "json" in error, error
    staging.delete(newest["folder"] + MANIFEST)  # the next run writes a fresh snapshot


def test_flink_counts_already_held_and_pinned_like_local(
    env: tuple[Store, Buckets, Settings],
) -> None:
    store, _, settings = env
    t = store.tables
    with store.read() as conn:
        # a contact the second criterion matches: pinned out, it must not enter
        target = conn.scalar(
            select(t.contacts.c.id).where(t.contacts.c.seniority >= 4).order_by(t.contacts.c.pk)
        )
    counts = {}
    for engine in ("local", "flink"):
        persona = f"pre-{engine}"
        add_persona(store, persona, name=persona, category="test", actor="test")
        first = cli(settings, "tag", "--persona", persona, "--expr", "seniority >= 3", "--json")
        assert first.returncode == 0, first.stderr
        pinned = cli(settings, "pin", persona, str(target), "--out")
        assert pinned.returncode == 0, pinned.stderr
        again = cli(
            settings,
            "tag",
            "--persona",
            persona,
            "--engine",
            engine,
            "--expr",
            'region = "EMEA" or seniority >= 4',
            "--json",
        )
        assert again.returncode == 0, again.stderr
        counts[engine] = json.loads(again.stdout)
    for key in ("matched", "tagged", "already", "pinned"):
        assert counts["flink"][key] == counts["local"][key], (key, counts)
    assert counts["flink"]["already"] > 0 and counts["flink"]["pinned"] == 1
    assert entered(store, "pre-flink") == entered(store, "pre-local")


def test_a_dense_flink_match_tags_like_local(env: tuple[Store, Buckets, Settings]) -> None:
    # Every contact matches: Flink's pks make one run, applied as a pk range
    # (no temp table); a pinned-out contact inside the range still stays out.
    store, _, settings = env
    t = store.tables
    with store.read() as conn:
        target = conn.scalar(select(t.contacts.c.id).order_by(t.contacts.c.pk).offset(100))
    counts = {}
    for engine in ("local", "flink"):
        persona = f"dense-{engine}"
        add_persona(store, persona, name=persona, category="test", actor="test")
        pinned = cli(settings, "pin", persona, str(target), "--out")
        assert pinned.returncode == 0, pinned.stderr
        tagged = cli(
            settings, "tag", "--persona", persona, "--engine", engine, "--expr", "id is not null"
        )
        assert tagged.returncode == 0, tagged.stderr
        again = cli(settings, "tag", "--persona", persona, "--expr", "id is not null", "--json")
        counts[engine] = {k: v for k, v in json.loads(again.stdout).items() if k != "request_id"}
    assert counts["flink"] == counts["local"]
    assert counts["flink"]["already"] == 3999 and counts["flink"]["pinned"] == 1
    assert entered(store, "dense-flink") == entered(store, "dense-local")
    assert target not in entered(store, "dense-flink")


def _submitter_ready(settings: Settings) -> bool:
    address = submitter.address_of(str(settings.flink_url))
    assert address is not None, settings.flink_url
    try:
        submitter.hello(address, 5)
    except submitter.SubmitterError:
        return False
    return True


def _tag_through_dispatcher(
    store: Store, buckets: Buckets, settings: Settings, key: str, expr: str, engine: str
) -> dict[str, object]:
    body = {"version": 1, "request_id": key, "persona": key, "engine": engine, "expr": expr}
    add_persona(store, key, name=key, category="test", actor="test")
    buckets["requests"].put(f"{key}.json", json.dumps(body).encode())
    d = Dispatcher(store, buckets, settings, workers=1)
    d.scan()
    d.drain()
    d.close()
    summary: dict[str, object] = json.loads(buckets["results"].get(f"{key}/summary.json"))
    return summary


def test_jobs_go_through_the_warm_submitter_else_flink_run(
    env: tuple[Store, Buckets, Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, buckets, settings = env
    # The test cluster runs a submitter (make flink-up); it answers once its JVM is warm.
    deadline = time.monotonic() + 180
    while not _submitter_ready(settings):
        assert time.monotonic() < deadline, "the test cluster's warm submitter never answered"
        time.sleep(1)
    expr = 'seniority >= 5 and region in ("EMEA", "AMER")'
    local = _tag_through_dispatcher(store, buckets, settings, "warm-local", expr, "local")
    caplog.set_level(logging.INFO, logger="personatag.engines.flink.batch")
    warm = _tag_through_dispatcher(store, buckets, settings, "warm-flink", expr, "flink")
    assert warm["status"] == "succeeded", warm
    assert warm["counts"] == local["counts"]
    assert "through the warm submitter" in caplog.text
    assert entered(store, "warm-flink") == entered(store, "warm-local")

    # A bundle whose job program predates the submitter (no run()) is submitted
    # with `flink run`, and still works.
    package = tmp_path / "personatag"
    shutil.copytree(Path(personatag.__file__).parent, package)
    job = package / "engines" / "flink" / "programs" / "batch_job.py"
    job.write_text(job.read_text().replace("def run(", "def _run(").replace("= run(", "= _run("))
    deploy(buckets, properties={"flink.parallelism": 1}, actor="test", package_dir=package)
    caplog.clear()
    try:
        old = _tag_through_dispatcher(store, buckets, settings, "warm-old", expr, "flink")
    finally:
        deploy(buckets, properties={"flink.parallelism": 1}, actor="test")
    assert old["status"] == "succeeded", old
    assert old["counts"] == local["counts"]
    assert "has no run() (an older bundle): submitting with flink run" in caplog.text
    assert "through the warm submitter" not in caplog.text
    assert entered(store, "warm-old") == entered(store, "warm-local")
