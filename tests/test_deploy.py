"""Job bundles and the deploy handler, on real local buckets (and one run on S3 via moto)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import warnings
import zipfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import personatag
from personatag.buckets import Buckets, open_buckets
from personatag.config import Settings
from personatag.engines.flink.deploy import (
    BundleError,
    active_bundle,
    build_bundle,
    deploy,
    fetch_active,
    handle_artifact,
    list_bundles,
    parse_properties,
    rollback,
    scan_artifacts,
)
from personatag.engines.flink.deploy.handler import ScanResult
from personatag.engines.flink.deploy.layout import check_properties, content_hash, read_properties
from personatag.errors import ConflictError, InputError
from tests import s3server
from tests.helpers import NOW

SOURCE = Path(personatag.__file__).resolve().parent
Entries = dict[str, bytes]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of the personatag sources, so edits elsewhere cannot change a build mid-test."""
    target = tmp_path_factory.mktemp("src") / "personatag"
    shutil.copytree(SOURCE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


@pytest.fixture
def buckets(tmp_path: Path) -> Buckets:
    return open_buckets(Settings(data_dir=tmp_path))


def at(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


def ship(buckets: Buckets, package: Path, minutes: int = 0, **properties: object) -> str:
    """Deploy the snapshot at NOW + minutes; return the version."""
    return deploy(
        buckets, properties=properties, actor="alice", now=at(minutes), package_dir=package
    ).version


def state_files(buckets: Buckets) -> dict[str, bytes]:
    state = buckets["job-properties"]
    return {key: state.get(key) for key in state.list()}


def read_zip(data: bytes) -> Entries:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write_zip(entries: Entries) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def sha256_line(data: bytes, key: str) -> bytes:
    return f"{hashlib.sha256(data).hexdigest()}  {key.rsplit('/', 1)[-1]}\n".encode()


def props_of(entries: Entries) -> dict[str, object]:
    doc: dict[str, object] = json.loads(entries["job.properties.json"])
    return doc


def build_only(buckets: Buckets, package: Path, minutes: int, **properties: object) -> str:
    info = build_bundle(
        buckets, properties=properties, actor="bob", now=at(minutes), package_dir=package
    )
    return info.key


# --- building ---------------------------------------------------------------


def test_same_sources_and_properties_give_the_same_hash_part_and_the_same_zip(
    package: Path, tmp_path: Path
) -> None:
    one = open_buckets(Settings(data_dir=tmp_path / "one"))
    two = open_buckets(Settings(data_dir=tmp_path / "two"))
    a = build_bundle(
        one, properties={"parallelism": 4}, actor="alice", now=NOW, package_dir=package
    )
    b = build_bundle(
        two, properties={"parallelism": 4}, actor="alice", now=NOW, package_dir=package
    )
    later = build_bundle(
        one, properties={"parallelism": 4}, actor="carol", now=at(90), package_dir=package
    )
    assert a.version == f"{personatag.__version__}-20260630120000-{a.content_hash[:8]}"
    assert later.version == f"{personatag.__version__}-20260630133000-{a.content_hash[:8]}"
    assert a.content_hash == b.content_hash == later.content_hash
    # Same sources, properties, time and builder: byte-identical zips.
    assert a.checksum == b.checksum
    assert one["artifacts"].get(a.key) == two["artifacts"].get(b.key)
    assert later.checksum != a.checksum  # created_at and created_by differ inside


def test_a_changed_file_or_property_changes_the_hash_part(package: Path, tmp_path: Path) -> None:
    buckets = open_buckets(Settings(data_dir=tmp_path))
    base = build_bundle(buckets, properties={}, actor="a", now=NOW, package_dir=package)
    other_props = build_bundle(
        buckets, properties={"parallelism": 2}, actor="a", now=NOW, package_dir=package
    )
    changed = tmp_path / "changed" / "personatag"
    shutil.copytree(package, changed)
    (changed / "domain.py").write_text((changed / "domain.py").read_text() + "\n# changed\n")
    other_code = build_bundle(buckets, properties={}, actor="a", now=NOW, package_dir=changed)
    hashes = {base.content_hash, other_props.content_hash, other_code.content_hash}
    assert len({h[:8] for h in hashes}) == 3


def test_bundle_layout_properties_and_checksum_file(package: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree" / "personatag"
    shutil.copytree(package, tree)
    (tree / "__pycache__").mkdir(exist_ok=True)
    (tree / "__pycache__" / "config.cpython-311.pyc").write_bytes(b"\0compiled")
    (tree / ".editor-state").write_text("x")
    (tree / "domain.py~").write_text("backup")
    buckets = open_buckets(Settings(data_dir=tmp_path))
    info = build_bundle(
        buckets,
        properties={"parallelism": 8, "checkpoint.interval": "30s"},
        actor="alice",
        now=NOW,
        package_dir=tree,
    )
    assert info.key == f"bundles/personatag-job-{info.version}.zip"
    data = buckets["artifacts"].get(info.key)
    assert info.checksum == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert buckets["artifacts"].get(info.key + ".sha256") == sha256_line(data, info.key)

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names) and names[0] == "job.properties.json"
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    for expected in (
        "personatag/__init__.py",
        "personatag/py.typed",
        "personatag/store/migrations/script.py.mako",
        "personatag/store/migrations/versions/0001_initial.py",
        "personatag/engines/flink/deploy/bundle.py",
    ):
        assert expected in names
    assert not [n for n in names if "__pycache__" in n or "/." in n or n.endswith(("~", ".pyc"))]

    entries = read_zip(data)
    props = props_of(entries)
    assert set(props) == {
        "format", "version", "content_hash", "personatag_version", "created_at",
        "created_by", "python", "properties", "files",
    }  # fmt: skip
    assert props["format"] == 1 and props["version"] == info.version
    assert props["personatag_version"] == personatag.__version__
    assert props["created_at"] == "2026-06-30T12:00:00Z" and props["created_by"] == "alice"
    assert props["properties"] == {"checkpoint.interval": "30s", "parallelism": 8}
    manifest = props["files"]
    assert isinstance(manifest, list)
    assert [f["path"] for f in manifest] == names[1:]
    for f in manifest:
        content = entries[f["path"]]
        assert f["size"] == len(content)
        assert f["sha256"] == hashlib.sha256(content).hexdigest()
    parsed = read_properties(entries["job.properties.json"])
    assert content_hash(parsed.files, parsed.properties) == props["content_hash"]


def test_the_default_package_is_the_running_personatag(tmp_path: Path) -> None:
    buckets = open_buckets(Settings(data_dir=tmp_path))
    info = build_bundle(buckets, properties={}, actor="alice", now=NOW)
    names = read_zip(buckets["artifacts"].get(info.key))
    assert "personatag/engines/flink/deploy/handler.py" in names
    assert not [n for n in names if "__pycache__" in n]


def test_a_different_bundle_under_the_same_name_is_refused(package: Path, tmp_path: Path) -> None:
    buckets = open_buckets(Settings(data_dir=tmp_path))
    first = build_bundle(buckets, properties={}, actor="alice", now=NOW, package_dir=package)
    again = build_bundle(buckets, properties={}, actor="alice", now=NOW, package_dir=package)
    assert again == first
    with pytest.raises(ConflictError, match="already exists with different contents"):
        build_bundle(buckets, properties={}, actor="bob", now=NOW, package_dir=package)


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ({"Parallelism": 4}, "engine property name 'Parallelism' is invalid"),
        ({"": 4}, "engine property name '' is invalid"),
        ({"parallelism": float("nan")}, "engine property parallelism: nan is not a JSON number"),
        ({"slots": {1, 2}}, "engine property slots: a value of type set is not JSON"),
        (
            {"env": {"x": [1, object()]}},
            r"engine property env\.x\[1\]: a value of type object is not JSON",
        ),
        ({"env": {1: "a"}}, "engine property env: key 1 is not a string"),
    ],
)
def test_engine_properties_are_validated(properties: dict[object, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        check_properties(properties)  # type: ignore[arg-type]


def test_property_options_parse_json_values_or_strings() -> None:
    assert parse_properties(["parallelism=4", "mode=fast", "on=true", 'name="7"', "x=NaN"]) == {
        "mode": "fast",
        "name": "7",
        "on": True,
        "parallelism": 4,
        "x": "NaN",
    }
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        parse_properties(["parallelism"])
    with pytest.raises(InputError, match="given twice"):
        parse_properties(["a=1", "a=2"])
    with pytest.raises(InputError, match="'Slots' is invalid"):
        parse_properties(["Slots=2"])


def test_an_actor_is_required(package: Path, buckets: Buckets) -> None:
    with pytest.raises(InputError, match="an actor"):
        build_bundle(buckets, properties={}, actor=" ", package_dir=package)


# --- deploying --------------------------------------------------------------


def test_deploy_writes_active_json_and_a_history_entry(package: Path, buckets: Buckets) -> None:
    deployment = deploy(
        buckets, properties={"parallelism": 4}, actor="alice", now=NOW, package_dir=package
    )
    key = f"bundles/personatag-job-{deployment.version}.zip"
    data = buckets["artifacts"].get(key)
    state = buckets["job-properties"]
    active = json.loads(state.get("active.json"))
    assert active == {
        "version": deployment.version,
        "checksum": hashlib.sha256(data).hexdigest(),
        "deployed_at": "2026-06-30T12:00:00Z",
        "by": "alice",
        "artifact": key,
        "rollback": False,
    }
    assert active_bundle(buckets) == active == deployment.to_json()
    history = state.list("history/")
    assert history == [f"history/00000001-{deployment.version}.json"]
    assert json.loads(state.get(history[0])) == active
    assert fetch_active(buckets) == (deployment, data)


def test_nothing_deployed_means_no_active_bundle(buckets: Buckets) -> None:
    assert active_bundle(buckets) is None
    assert list_bundles(buckets) == []
    with pytest.raises(ConflictError, match="no job bundle is deployed"):
        fetch_active(buckets)


def test_handling_a_bundle_twice_changes_nothing(package: Path, buckets: Buckets) -> None:
    key = build_only(buckets, package, 0)
    first = handle_artifact(buckets, key, actor="watcher", now=at(1))
    before = state_files(buckets)
    assert handle_artifact(buckets, key, actor="someone", now=at(5)) == first
    assert handle_artifact(buckets, key + ".sha256", actor="x", now=at(6)) == first
    assert scan_artifacts(buckets, actor="watcher", now=at(7)).deployed == []
    assert state_files(buckets) == before


def test_a_tampered_active_bundle_is_not_fetched(package: Path, buckets: Buckets) -> None:
    version = ship(buckets, package)
    key = f"bundles/personatag-job-{version}.zip"
    data = bytearray(buckets["artifacts"].get(key))
    data[100] ^= 0xFF
    buckets["artifacts"].put(key, bytes(data))
    with pytest.raises(BundleError, match="no longer matches the checksum recorded"):
        fetch_active(buckets)


# --- rejections -------------------------------------------------------------

Tamper = Callable[[Buckets, str], None]


def _rezip(change: Callable[[Entries], None]) -> Tamper:
    """Rewrite the zip with ``change`` applied, with a matching .sha256 file."""

    def tamper(buckets: Buckets, key: str) -> None:
        entries = read_zip(buckets["artifacts"].get(key))
        change(entries)
        data = write_zip(entries)
        buckets["artifacts"].put(key, data)
        buckets["artifacts"].put(key + ".sha256", sha256_line(data, key))

    return tamper


def _flip_byte(buckets: Buckets, key: str) -> None:
    data = bytearray(buckets["artifacts"].get(key))
    data[len(data) // 2] ^= 0x01
    buckets["artifacts"].put(key, bytes(data))


def _flip_byte_inside_an_entry(buckets: Buckets, key: str) -> None:
    """Corrupt the compressed data of one entry and 'fix' the .sha256: the zip catches it."""
    data = bytearray(buckets["artifacts"].get(key))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("personatag/cli/root.py")
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0xFF
    buckets["artifacts"].put(key, bytes(data))
    buckets["artifacts"].put(key + ".sha256", sha256_line(bytes(data), key))


def _truncate(buckets: Buckets, key: str) -> None:
    data = buckets["artifacts"].get(key)[:-200]
    buckets["artifacts"].put(key, data)
    buckets["artifacts"].put(key + ".sha256", sha256_line(data, key))


def _wrong_checksum(buckets: Buckets, key: str) -> None:
    name = key.rsplit("/", 1)[-1]
    buckets["artifacts"].put(key + ".sha256", f"{'0' * 64}  {name}\n".encode())


def _checksum_for_another_file(buckets: Buckets, key: str) -> None:
    data = buckets["artifacts"].get(key)
    buckets["artifacts"].put(key + ".sha256", sha256_line(data, "other.zip"))


def _malformed_checksum(buckets: Buckets, key: str) -> None:
    buckets["artifacts"].put(key + ".sha256", b"not a checksum\n")


def _no_checksum(buckets: Buckets, key: str) -> None:
    buckets["artifacts"].delete(key + ".sha256")


def _duplicate_entry(buckets: Buckets, key: str) -> None:
    data = buckets["artifacts"].get(key)
    buffer = io.BytesIO(data)
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "a") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name, as it should
        archive.writestr("personatag/config.py", b"# shadowed")
    buckets["artifacts"].put(key, buffer.getvalue())
    buckets["artifacts"].put(key + ".sha256", sha256_line(buffer.getvalue(), key))


def _symlink_entry(buckets: Buckets, key: str) -> None:
    buffer = io.BytesIO(buckets["artifacts"].get(key))
    with zipfile.ZipFile(buffer, "a") as archive:
        link = zipfile.ZipInfo("personatag/link.py", date_time=(1980, 1, 1, 0, 0, 0))
        link.external_attr = 0o120777 << 16
        archive.writestr(link, b"/etc/passwd")
    buckets["artifacts"].put(key, buffer.getvalue())
    buckets["artifacts"].put(key + ".sha256", sha256_line(buffer.getvalue(), key))


def _edit_properties(change: Callable[[dict[str, object]], None]) -> Tamper:
    def edit(entries: Entries) -> None:
        doc = props_of(entries)
        change(doc)
        entries["job.properties.json"] = json.dumps(doc).encode()

    return _rezip(edit)


def _same_size_edit(entries: Entries) -> None:
    entries["personatag/config.py"] = entries["personatag/config.py"].replace(b"S", b"Z", 1)


def _consistent_manifest_edit(entries: Entries) -> None:
    """Change a file and its manifest entry, but not the content hash."""
    entries["personatag/config.py"] += b"\nimport os  # injected\n"
    doc = props_of(entries)
    for f in doc["files"]:  # type: ignore[attr-defined]
        if f["path"] == "personatag/config.py":
            f["sha256"] = hashlib.sha256(entries["personatag/config.py"]).hexdigest()
            f["size"] = len(entries["personatag/config.py"])
    entries["job.properties.json"] = json.dumps(doc).encode()


REJECTIONS: list[tuple[str, Tamper, str]] = [
    ("flipped byte", _flip_byte, r"checksum mismatch: personatag-job-.*\.zip\.sha256 says"),
    ("corrupt entry", _flip_byte_inside_an_entry, "entry 'personatag/cli/root.py' is corrupt"),
    ("truncated zip", _truncate, "not a readable zip file"),
    ("wrong sha256 file", _wrong_checksum, "checksum mismatch: .* says 0000000000000000"),
    ("sha256 of another file", _checksum_for_another_file, "it is for 'other.zip'"),
    ("malformed sha256 file", _malformed_checksum, r"\.sha256 is malformed: expected"),
    ("missing sha256 file", _no_checksum, r"checksum file .*\.zip\.sha256 is missing"),
    (
        "missing manifest file",
        _rezip(lambda e: e.pop("personatag/config.py")),
        "file.s. in the manifest but not in the zip: personatag/config.py",
    ),
    (
        "extra file",
        _rezip(lambda e: e.update({"personatag/evil.py": b"import os"})),
        r"unexpected file.s. not in the manifest: personatag/evil\.py",
    ),
    (
        "zip-slip",
        _rezip(lambda e: e.update({"../evil.py": b"x"})),
        r"entry '\.\./evil\.py' climbs out of the bundle",
    ),
    (
        "absolute path",
        _rezip(lambda e: e.update({"/etc/cron.d/evil": b"x"})),
        "entry '/etc/cron.d/evil' is an absolute path",
    ),
    (
        "dot segment",
        _rezip(lambda e: e.update({"personatag/./config.py": b"x"})),
        "is not a normalised path",
    ),
    ("duplicate entry", _duplicate_entry, "entry 'personatag/config.py' appears more than once"),
    (
        "symbolic link",
        _symlink_entry,
        "entry 'personatag/link.py' is a symbolic link",
    ),
    (
        "no job.properties.json",
        _rezip(lambda e: e.pop("job.properties.json")),
        "job.properties.json is missing",
    ),
    (
        "job.properties.json not JSON",
        _rezip(lambda e: e.update({"job.properties.json": b"{nope"})),
        "job.properties.json is not valid JSON",
    ),
    (
        "job.properties.json without created_by",
        _edit_properties(lambda d: d.pop("created_by")),
        "job.properties.json is malformed: created_by: Field required",
    ),
    (
        "job.properties.json with a bad sha256",
        _edit_properties(lambda d: d["files"][0].update(sha256="xyz")),  # type: ignore[index]
        "is malformed: files.0.sha256: String should match pattern",
    ),
    (
        "upper-case engine property",
        _edit_properties(lambda d: d.update(properties={"Parallelism": 4})),
        "is malformed: properties: .*engine property name 'Parallelism' is invalid",
    ),
    (
        "newer format",
        _edit_properties(lambda d: d.update(format=2)),
        "has format 2, newer than this personatag reads",
    ),
    (
        "manifest path outside the package",
        _edit_properties(
            lambda d: d["files"].append({"path": "../x", "sha256": "0" * 64, "size": 1})
        ),  # type: ignore[attr-defined]
        r"manifest path '\.\./x' climbs out of the bundle",
    ),
    (
        "other version inside",
        _edit_properties(lambda d: d.update(version="0.0.1-20200101000000-00000000")),
        "job.properties.json says version '0.0.1-20200101000000-00000000', the file name",
    ),
    (
        "file content edited",
        _rezip(_same_size_edit),
        "personatag/config.py does not match its sha256",
    ),
    ("manifest edited to match", _rezip(_consistent_manifest_edit), "content hash mismatch"),
]


@pytest.mark.parametrize(
    ("tamper", "message"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS]
)
def test_an_invalid_bundle_is_rejected_and_active_json_is_untouched(
    package: Path, buckets: Buckets, tamper: Tamper, message: str
) -> None:
    ship(buckets, package, 0)
    active_before = buckets["job-properties"].get("active.json")
    key = build_only(buckets, package, 10, parallelism=2)
    tamper(buckets, key)

    with pytest.raises(BundleError, match=message) as caught:
        handle_artifact(buckets, key, actor="watcher", now=at(11))
    assert str(caught.value).startswith(f"bundle {key}: ")
    assert buckets["job-properties"].get("active.json") == active_before

    version = key.removeprefix("bundles/personatag-job-").removesuffix(".zip")
    record = json.loads(buckets["job-properties"].get(f"rejected/{version}.json"))
    assert record["artifact"] == key and record["by"] == "watcher"
    assert record["reason"] == caught.value.problem
    assert record["rejected_at"] == "2026-06-30T12:11:00Z"
    listed = {b.artifact: b for b in list_bundles(buckets)}
    assert listed[key].state == "rejected" and listed[key].reason == caught.value.problem
    assert not listed[key].active


def test_a_zip_that_is_not_a_bundle_name_is_refused_without_a_trace(buckets: Buckets) -> None:
    buckets["artifacts"].put("bundles/other.zip", b"PK")
    with pytest.raises(BundleError, match="not a bundle key"):
        handle_artifact(buckets, "bundles/other.zip", actor="w")
    missing = "bundles/personatag-job-0.1.0-20260101000000-abcdef12.zip"
    with pytest.raises(BundleError, match="not found in the artifacts bucket"):
        handle_artifact(buckets, missing, actor="w")
    # a scan ignores the stray zip: nothing activated, nothing refused, no state
    assert scan_artifacts(buckets, actor="w") == ScanResult(deployed=[], rejected=[])
    assert state_files(buckets) == {}


# --- scanning ---------------------------------------------------------------


def test_scan_handles_new_bundles_oldest_first_and_is_idempotent(
    package: Path, buckets: Buckets
) -> None:
    newer = build_only(buckets, package, 20, parallelism=2)
    older = build_only(buckets, package, 10)
    bad = build_only(buckets, package, 15, parallelism=3)
    _wrong_checksum(buckets, bad)
    buckets["artifacts"].put("notes/readme.txt", b"not a bundle")

    result = scan_artifacts(buckets, actor="watcher", now=at(30))
    assert [d.artifact for d in result.deployed] == [older, newer]
    assert [k for k, _ in result.rejected] == [bad]
    assert active_bundle(buckets)["artifact"] == newer  # type: ignore[index]

    before = state_files(buckets)
    again = scan_artifacts(buckets, actor="watcher", now=at(40))
    assert again.deployed == [] and again.rejected == []
    assert state_files(buckets) == before
    # Handling a rejected bundle again for the same reason keeps the first trace.
    with pytest.raises(BundleError):
        handle_artifact(buckets, bad, actor="other", now=at(50))
    assert state_files(buckets) == before


def test_a_checksum_file_that_arrives_late_gets_the_bundle_deployed(
    package: Path, buckets: Buckets
) -> None:
    key = build_only(buckets, package, 0)
    checksum = buckets["artifacts"].get(key + ".sha256")
    buckets["artifacts"].delete(key + ".sha256")
    assert [k for k, _ in scan_artifacts(buckets, actor="watcher").rejected] == [key]
    buckets["artifacts"].put(key + ".sha256", checksum)
    result = scan_artifacts(buckets, actor="watcher", now=at(1))
    assert [d.artifact for d in result.deployed] == [key]
    assert buckets["job-properties"].list("rejected/") == []
    assert [b.state for b in list_bundles(buckets)] == ["deployed"]


def test_a_lost_active_json_is_restored_from_history(package: Path, buckets: Buckets) -> None:
    ship(buckets, package, 0)
    expected = buckets["job-properties"].get("active.json")
    buckets["job-properties"].delete("active.json")
    assert active_bundle(buckets) is None
    scan_artifacts(buckets, actor="watcher")
    assert buckets["job-properties"].get("active.json") == expected


# --- rollback and list ------------------------------------------------------


def test_rollback_walks_back_through_the_deploys(package: Path, buckets: Buckets) -> None:
    v1 = ship(buckets, package, 0)
    v2 = ship(buckets, package, 1, parallelism=2)
    v3 = ship(buckets, package, 2, parallelism=3)

    back = rollback(buckets, actor="bob", now=at(3))
    assert (back.version, back.by, back.rollback) == (v2, "bob", True)
    active = active_bundle(buckets)
    assert active is not None
    assert active["version"] == v2 and active["rollback"] is True
    assert active["deployed_at"] == "2026-06-30T12:03:00Z"
    assert rollback(buckets, actor="bob", now=at(4)).version == v1
    with pytest.raises(ConflictError, match=f"{v1} is the earliest deployed version"):
        rollback(buckets, actor="bob", now=at(5))

    v4 = ship(buckets, package, 6, parallelism=4)
    assert rollback(buckets, actor="bob", now=at(7)).version == v1
    assert len(buckets["job-properties"].list("history/")) == 7
    listed = list_bundles(buckets)
    assert [b.version for b in listed] == [v1, v2, v3, v4]
    assert [b.active for b in listed] == [True, False, False, False]
    assert {b.state for b in listed} == {"deployed"}


def test_rollback_with_nothing_before_is_an_error(package: Path, buckets: Buckets) -> None:
    with pytest.raises(ConflictError, match="nothing is deployed"):
        rollback(buckets, actor="bob")
    ship(buckets, package, 0)
    before = state_files(buckets)
    with pytest.raises(ConflictError, match="nothing before it to roll back to"):
        rollback(buckets, actor="bob")
    assert state_files(buckets) == before


def test_rollback_target_must_still_validate(package: Path, buckets: Buckets) -> None:
    v1 = ship(buckets, package, 0)
    ship(buckets, package, 1, parallelism=2)
    before = state_files(buckets)
    _rezip(lambda e: e.update({"personatag/evil.py": b"x"}))(
        buckets, f"bundles/personatag-job-{v1}.zip"
    )
    with pytest.raises(BundleError, match=f"cannot roll back to {v1}: unexpected file"):
        rollback(buckets, actor="bob")
    assert state_files(buckets) == before


def test_list_shows_sizes_checksums_and_pending_bundles(package: Path, buckets: Buckets) -> None:
    v1 = ship(buckets, package, 0)
    pending = build_only(buckets, package, 5, parallelism=2)
    listed = list_bundles(buckets)
    assert [(b.version, b.state, b.active) for b in listed] == [
        (v1, "deployed", True),
        (pending.removeprefix("bundles/personatag-job-").removesuffix(".zip"), "pending", False),
    ]
    data = buckets["artifacts"].get(pending)
    assert listed[1].size == len(data)
    assert listed[1].checksum == hashlib.sha256(data).hexdigest()
    assert listed[1].created_at == at(5)
    assert listed[1].to_json()["created_at"] == "2026-06-30T12:05:00Z"


# --- the same flow on S3 ----------------------------------------------------


@pytest.fixture
def s3_settings(s3_endpoint: str, tmp_path: Path) -> Settings:
    """Settings for a fresh prefix on the tests' S3-compatible server (moto)."""
    return s3server.s3_settings(s3_endpoint, tmp_path)


def test_deploy_rollback_and_list_on_s3(package: Path, s3_settings: Settings) -> None:
    buckets = open_buckets(s3_settings)
    v1 = ship(buckets, package, 0)
    v2 = ship(buckets, package, 1, parallelism=2)
    assert buckets["artifacts"].url(f"bundles/personatag-job-{v2}.zip").startswith("s3://")
    assert active_bundle(buckets)["version"] == v2  # type: ignore[index]
    assert rollback(buckets, actor="bob", now=at(2)).version == v1
    assert [(b.version, b.active) for b in list_bundles(buckets)] == [(v1, True), (v2, False)]
    bad = build_only(buckets, package, 3, parallelism=3)
    _wrong_checksum(buckets, bad)
    assert [k for k, _ in scan_artifacts(buckets, actor="watcher").rejected] == [bad]
    assert active_bundle(buckets)["version"] == v1  # type: ignore[index]
