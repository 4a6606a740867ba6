"""`personatag doctor`: real stores, real buckets, a port where nothing listens."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from personatag import doctor
from personatag.buckets import AREAS, open_buckets
from personatag.config import Settings
from personatag.doctor import Check, Report, check_bucket, check_disk, check_store
from personatag.store import open_store
from tests.s3server import S3_BUCKET, free_port, s3_client, s3_settings

ROOT = Path(__file__).resolve().parent.parent
PERSONATAG = Path(sys.executable).parent / "personatag"


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **kw)  # type: ignore[arg-type]


# -- lines and the report -----------------------------------------------------------


def test_lines_say_status_name_detail_and_fix() -> None:
    assert Check("java", "ok", "17").line() == "ok   java 17"
    assert (
        Check("flink cluster", "fail", "nothing answers", "run `personatag flink start`").line()
        == "FAIL flink cluster: nothing answers — run `personatag flink start`"
    )
    assert Check("disk data dir", "warn", "3.0 GiB free", "free space").line() == (
        "warn disk data dir: 3.0 GiB free — free space"
    )


def test_report_fails_only_on_a_fail() -> None:
    ok, warn, fail = (
        Check("a", "ok", "x"),
        Check("b", "warn", "y", "f"),
        Check("c", "fail", "z", "f"),
    )
    assert Report((ok, warn)).ok
    report = Report((ok, warn, fail))
    assert not report.ok
    assert report.as_dict()["checks"][2] == {
        "name": "c",
        "status": "fail",
        "detail": "z",
        "fix": "f",
    }


# -- Java and Flink -------------------------------------------------------------------


def test_java_on_this_machine_is_found() -> None:
    check = doctor.check_java()
    assert check.status in ("ok", "warn"), check.line()


def test_java_home_without_java_fails_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    check = doctor.check_java()
    assert check.status == "fail"
    assert str(tmp_path) in check.detail
    assert "Java 17" in (check.fix or "") and "JAVA_HOME" in (check.fix or "")


def test_a_flink_home_that_is_not_flink_names_the_setting(tmp_path: Path) -> None:
    settings = _settings(tmp_path, flink_python=Path(sys.executable), flink_home=tmp_path)
    check = doctor.check_flink_home(settings)
    assert check.status == "fail"
    assert "PERSONATAG_FLINK_HOME" in (check.fix or "")


def test_a_cluster_that_does_not_answer_says_to_start_it(tmp_path: Path) -> None:
    port = free_port()
    started = time.monotonic()
    check = doctor.check_flink_cluster(_settings(tmp_path, flink_rest_port=port))
    assert time.monotonic() - started < 10
    assert check.status == "fail"
    assert f"127.0.0.1:{port}" in check.detail
    assert check.fix == "run `personatag flink start`"
    assert check.line().startswith("FAIL flink cluster: ")
    assert check.line().endswith(" — run `personatag flink start`")


def test_a_remote_cluster_that_does_not_answer_names_the_url_setting(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    check = doctor.check_flink_cluster(_settings(tmp_path, flink_url=url))
    assert check.status == "fail"
    assert "PERSONATAG_FLINK_URL" in (check.fix or "") and url in (check.fix or "")


class _Overview(BaseHTTPRequestHandler):
    """Stands in for Flink's /overview with a body the test chooses."""

    body: bytes = b""

    def do_GET(self) -> None:
        status = 200 if self.path == "/overview" and self.body else 404
        payload = self.body if status == 200 else b'{"errors": ["Not found: /overview"]}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _fake_overview(overview: dict[str, object] | None) -> Iterator[int]:
    body = json.dumps(overview).encode() if overview is not None else b""
    handler = type("Handler", (_Overview,), {"body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _overview(tms: int, total: int, free: int) -> dict[str, object]:
    return {
        "taskmanagers": tms,
        "slots-total": total,
        "slots-available": free,
        "jobs-running": 1,
        "flink-version": "2.3.0",
    }


def test_a_local_cluster_without_task_managers_fails(tmp_path: Path) -> None:
    with _fake_overview(_overview(0, 0, 0)) as port:
        check = doctor.check_flink_cluster(_settings(tmp_path, flink_rest_port=port))
    assert check.status == "fail"
    assert "no task manager" in check.detail
    assert "personatag flink start" in (check.fix or "")


def test_a_remote_cluster_without_task_managers_only_warns(tmp_path: Path) -> None:
    with _fake_overview(_overview(0, 0, 0)) as port:
        url = f"http://127.0.0.1:{port}"
        check = doctor.check_flink_cluster(_settings(tmp_path, flink_url=url))
    assert check.status == "warn"
    assert "on demand" in (check.fix or "")


def test_a_cluster_with_every_slot_taken_warns(tmp_path: Path) -> None:
    with _fake_overview(_overview(2, 8, 0)) as port:
        check = doctor.check_flink_cluster(_settings(tmp_path, flink_rest_port=port))
    assert check.status == "warn"
    assert "0 of 8 slots free" in check.detail
    assert "PERSONATAG_FLINK_SLOTS" in (check.fix or "")


def test_a_cluster_with_free_slots_is_ok(tmp_path: Path) -> None:
    with _fake_overview(_overview(2, 8, 6)) as port:
        check = doctor.check_flink_cluster(_settings(tmp_path, flink_rest_port=port))
    assert check.status == "ok"
    assert check.line() == (
        f"ok   flink cluster at http://127.0.0.1:{port}: Flink 2.3.0, 2 task managers, "
        "6 of 8 slots free, 1 job running"
    )


def test_something_that_is_not_flink_fails(tmp_path: Path) -> None:
    with _fake_overview(None) as port:
        check = doctor.check_flink_cluster(_settings(tmp_path, flink_rest_port=port))
    assert check.status == "fail"
    assert "HTTP 404" in check.detail


def test_the_warm_submitter_is_checked_on_a_local_cluster_only(tmp_path: Path) -> None:
    from personatag.engines.flink.runtime.submitter import Submitter

    listen = free_port()
    rest = listen - 3  # the submitter of a cluster whose REST port is `rest`
    local = _settings(tmp_path, flink_rest_port=rest)
    [missing] = doctor.check_flink_submitter(local)
    assert missing.status == "warn"
    assert f"none answers on 127.0.0.1:{listen}" in missing.detail
    assert "flink run" in missing.detail and "submitter.console" in (missing.fix or "")

    threading.Thread(
        target=Submitter(f"127.0.0.1:{rest}").serve, args=(listen,), daemon=True
    ).start()
    deadline = time.monotonic() + 10
    while (found := doctor.check_flink_submitter(local))[0].status != "ok":
        assert time.monotonic() < deadline, found
        time.sleep(0.05)
    assert found[0].line() == (
        f"ok   flink submitter pid {os.getpid()} on 127.0.0.1:{listen} for 127.0.0.1:{rest}"
    )
    [other] = doctor.check_flink_submitter(_settings(tmp_path, flink_rest_port=rest + 1000))
    assert other.status == "warn"  # nothing on that cluster's port + 3
    remote = _settings(tmp_path, flink_url="http://flink.example.internal:8081")
    assert doctor.check_flink_submitter(remote) == []
    assert (
        doctor.check_flink_submitter(
            _settings(tmp_path, flink_rest_port=rest, flink_submitter=False)
        )
        == []
    )


@pytest.mark.skipif(
    not os.environ.get("PERSONATAG_TEST_FLINK_URL"),
    reason="PERSONATAG_TEST_FLINK_URL is not set (`make test` starts a local cluster)",
)
def test_a_running_cluster_reports_task_managers_and_slots(tmp_path: Path) -> None:
    url = os.environ["PERSONATAG_TEST_FLINK_URL"]
    check = doctor.check_flink_cluster(_settings(tmp_path, flink_url=url))
    assert check.status in ("ok", "warn"), check.line()
    assert "task manager" in check.detail and "slots free" in check.detail


# -- store --------------------------------------------------------------------------------


def test_a_store_at_head_is_ok(store_url: str, tmp_path: Path) -> None:
    check = check_store(_settings(tmp_path, store_url=store_url))
    assert check.status == "ok", check.line()
    assert check.fix is None


def test_a_missing_store_says_init_and_creates_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    check = check_store(settings)
    assert check.status == "fail"
    assert check.fix == "run `personatag init`"
    assert not (settings.data_dir / "store.db").exists()


def test_a_database_without_our_schema_says_init(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.data_dir.mkdir()
    with sqlite3.connect(settings.data_dir / "store.db") as conn:
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    check = check_store(settings)
    assert check.status == "fail"
    assert "not initialised" in check.detail
    assert check.fix == "run `personatag init`"


def test_a_store_behind_the_code_says_init(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    open_store(settings.resolved_store_url, create=True).dispose()
    with sqlite3.connect(settings.data_dir / "store.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    check = check_store(settings)
    assert check.status == "fail"
    assert "revision 0001" in check.detail
    assert check.fix == "run `personatag init`"


def test_a_store_migrated_by_a_later_personatag_says_upgrade(tmp_path: Path) -> None:
    # Revision names are not numbers (0009_users): any unknown one is "newer".
    settings = _settings(tmp_path)
    open_store(settings.resolved_store_url, create=True).dispose()
    with sqlite3.connect(settings.data_dir / "store.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0010_later'")
    check = check_store(settings)
    assert check.status == "fail"
    assert "revision 0010_later, newer than this personatag" in check.detail
    assert check.fix == "upgrade personatag to the version that migrated this store"


def test_a_store_that_does_not_answer_names_the_setting(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"
    check = check_store(_settings(tmp_path, store_url=url))
    assert check.status == "fail"
    assert "PERSONATAG_STORE_URL" in (check.fix or "")


# -- buckets ------------------------------------------------------------------------------


@pytest.mark.parametrize("area", AREAS)
def test_local_bucket_areas_are_probed_and_left_clean(tmp_path: Path, area: str) -> None:
    settings = _settings(tmp_path)
    check = check_bucket(settings, area)
    assert check.status == "ok", check.line()
    bucket = open_buckets(settings)[area]
    assert bucket.list() == []
    assert bucket.local_root is not None
    assert not (bucket.local_root / ".doctor").exists()


def test_a_local_area_that_cannot_be_created_fails_with_the_fix(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    (settings.data_dir / "buckets").mkdir(parents=True)
    (settings.data_dir / "buckets" / "staging").write_text("a file where the folder goes")
    check = check_bucket(settings, "staging")
    assert check.status == "fail"
    assert "PERSONATAG_DATA_DIR" in (check.fix or "")


def test_s3_bucket_areas_are_probed_and_left_clean(s3_endpoint: str, tmp_path: Path) -> None:
    settings = s3_settings(s3_endpoint, tmp_path)
    for area in AREAS:
        check = check_bucket(settings, area)
        assert check.status == "ok", check.line()
        assert check.detail.startswith("s3://")
    prefix = (settings.bucket_url or "").split("/", 3)[3]
    listed = s3_client(s3_endpoint).list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix)
    assert listed.get("KeyCount", 0) == 0


def test_a_missing_s3_bucket_fails_with_the_s3_fix(s3_endpoint: str, tmp_path: Path) -> None:
    settings = s3_settings(s3_endpoint, tmp_path).model_copy(
        update={"bucket_url": "s3://no-such-bucket-for-doctor/x"}
    )
    check = check_bucket(settings, "requests")
    assert check.status == "fail"
    assert "PERSONATAG_BUCKET_URL" in (check.fix or "")


# -- disk -----------------------------------------------------------------------------------


def test_disk_space_thresholds(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "made" / "yet"
    assert check_disk("disk data dir", missing, "fix", 0, 0).status == "ok"
    warn = check_disk("disk data dir", missing, "free space", 2**62, 0)
    assert warn.status == "warn" and warn.fix == "free space"
    fail = check_disk("disk data dir", missing, "free space", 2**62, 2**62)
    assert fail.status == "fail" and str(missing) in fail.detail


def test_local_clusters_get_a_flink_tmp_check(tmp_path: Path) -> None:
    local = doctor.check_disks(_settings(tmp_path, flink_rest_port=free_port()))
    assert [c.name for c in local] == ["disk data dir", "disk flink tmp"]
    remote = doctor.check_disks(_settings(tmp_path, flink_url="http://flink.example:8081"))
    assert [c.name for c in remote] == ["disk data dir"]


# -- robustness -----------------------------------------------------------------------------


def test_a_check_that_raises_or_hangs_becomes_a_fail_line() -> None:
    def boom() -> Check:
        raise RuntimeError("kaput")

    release = threading.Event()

    def hang() -> Check:
        release.wait(30)
        return Check("hang", "ok", "late")

    probes = [
        doctor.Probe("boom", boom, "the fix for boom"),
        doctor.Probe("hang", hang, "the fix for hang"),
        doctor.Probe("fine", lambda: Check("fine", "ok", "yes"), "-"),
    ]
    started = time.monotonic()
    try:
        report = doctor.run_probes(probes, timeout_s=0.5)
    finally:
        release.set()
    assert time.monotonic() - started < 5
    boom_c, hang_c, fine_c = report.checks
    assert (boom_c.status, boom_c.fix) == ("fail", "the fix for boom")
    assert "RuntimeError: kaput" in boom_c.detail
    assert (hang_c.status, hang_c.fix) == ("fail", "the fix for hang")
    assert "no answer within" in hang_c.detail
    assert fine_c.status == "ok"
    assert not report.ok


# -- the command --------------------------------------------------------------------------


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    clean |= {"PERSONATAG_DATA_DIR": str(tmp_path / "data")} | env
    return subprocess.run(
        [str(PERSONATAG), *args],
        capture_output=True,
        text=True,
        env=clean,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_doctor_json_shape_and_exit_code(tmp_path: Path) -> None:
    port = str(free_port())
    proc = _run(tmp_path, "doctor", "--json", PERSONATAG_FLINK_REST_PORT=port)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in report["checks"])
    assert all(c["status"] in ("ok", "warn", "fail") for c in report["checks"])
    assert all(c["fix"] for c in report["checks"] if c["status"] != "ok")
    by_name = {c["name"]: c for c in report["checks"]}
    expected = {"java", "flink home", "flink cluster", "store", "disk data dir", "disk flink tmp"}
    assert expected | {f"bucket {a}" for a in AREAS} <= set(by_name)
    assert by_name["flink cluster"]["status"] == "fail"
    assert port in by_name["flink cluster"]["detail"]
    assert by_name["flink cluster"]["fix"] == "run `personatag flink start`"
    assert by_name["store"]["status"] == "fail"
    assert by_name["store"]["fix"] == "run `personatag init`"
    assert all(by_name[f"bucket {a}"]["status"] == "ok" for a in AREAS)


def test_doctor_text_after_init(tmp_path: Path) -> None:
    port = str(free_port())
    assert _run(tmp_path, "init").returncode == 0
    proc = _run(tmp_path, "doctor", PERSONATAG_FLINK_REST_PORT=port)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("ok   store ") for line in lines), proc.stdout
    cluster = [line for line in lines if "flink cluster" in line]
    assert len(cluster) == 1
    assert cluster[0].startswith("FAIL flink cluster: ")
    assert cluster[0].endswith("— run `personatag flink start`")


def test_doctor_reports_bad_settings_as_a_check(tmp_path: Path) -> None:
    proc = _run(tmp_path, "doctor", "--json", PERSONATAG_NO_SUCH_SETTING="1")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    [check] = report["checks"]
    assert check["name"] == "settings" and "PERSONATAG_NO_SUCH_SETTING" in check["detail"]
