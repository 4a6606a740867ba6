"""Buckets: one suite run on a local folder and on a real S3-compatible server (moto)."""

from __future__ import annotations

import os
import sys
import threading
import uuid
from pathlib import Path

import pytest

from personatag.buckets import (
    AREAS,
    Bucket,
    BucketError,
    Buckets,
    open_buckets,
    validate_key,
)
from personatag.config import Settings, load_settings
from personatag.errors import ConfigError, InputError
from tests.s3server import S3_BUCKET, S3_KEY, S3_REGION, S3_SECRET
from tests.s3server import free_port as _free_port
from tests.s3server import s3_client as _s3_client


def _s3_settings(endpoint: str, tmp_path: Path, url: str) -> Settings:
    return Settings(
        data_dir=tmp_path,
        bucket_url=url,
        s3_endpoint_url=endpoint,
        s3_access_key=S3_KEY,  # type: ignore[arg-type]
        s3_secret_key=S3_SECRET,  # type: ignore[arg-type]
        s3_region=S3_REGION,
    )


@pytest.fixture(params=["local", "s3"])
def buckets(request: pytest.FixtureRequest, tmp_path: Path) -> Buckets:
    """Fresh buckets of each kind: a local folder, and a unique prefix on the S3 server."""
    if request.param == "local":
        return open_buckets(Settings(data_dir=tmp_path))
    endpoint = request.getfixturevalue("s3_endpoint")
    url = f"s3://{S3_BUCKET}/run-{uuid.uuid4().hex[:12]}"
    return open_buckets(_s3_settings(endpoint, tmp_path, url))


@pytest.fixture
def bucket(buckets: Buckets) -> Bucket:
    return buckets["results"]


# -- the shared suite ---------------------------------------------------------------


def test_put_then_get_exists_size(bucket: Bucket) -> None:
    assert not bucket.exists("job-1/summary.json")
    bucket.put("job-1/summary.json", b'{"tagged": 3}')
    assert bucket.get("job-1/summary.json") == b'{"tagged": 3}'
    assert bucket.exists("job-1/summary.json")
    assert bucket.size("job-1/summary.json") == 13


def test_put_replaces_and_keeps_empty_objects(bucket: Bucket) -> None:
    bucket.put("a", b"first version")
    bucket.put("a", b"second")
    assert bucket.get("a") == b"second"
    bucket.put("empty", b"")
    assert bucket.get("empty") == b""
    assert bucket.size("empty") == 0
    assert bucket.exists("empty")


def test_put_file_streams_a_local_file(bucket: Bucket, tmp_path: Path) -> None:
    source = tmp_path / "upload.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    source.write_bytes(payload)
    bucket.put_file("snapshots/contacts.bin", source)
    assert bucket.size("snapshots/contacts.bin") == len(payload)
    assert bucket.get("snapshots/contacts.bin") == payload


def test_put_file_of_a_missing_source_names_the_source(bucket: Bucket, tmp_path: Path) -> None:
    with pytest.raises(BucketError, match="no such local file"):
        bucket.put_file("x", tmp_path / "nope.bin")
    assert not bucket.exists("x")


def test_open_streams_and_seeks(bucket: Bucket) -> None:
    payload = bytes(range(256)) * 1000
    bucket.put("big.bin", payload)
    with bucket.open("big.bin") as stream:
        assert stream.read(10) == payload[:10]
        stream.seek(1000)
        assert stream.read(5) == payload[1000:1005]
        stream.seek(0)
        chunks = []
        while chunk := stream.read(4096):
            chunks.append(chunk)
    assert b"".join(chunks) == payload


def test_open_reads_lines(bucket: Bucket) -> None:
    bucket.put("ids.csv", b"id\nc1\nc2\n")
    with bucket.open("ids.csv") as stream:
        assert list(stream) == [b"id\n", b"c1\n", b"c2\n"]


def test_list_is_sorted_recursive_and_relative(bucket: Bucket) -> None:
    for key in ["b/2.json", "a.json", "b/1.json", "b/c/deep.json", "ba.json"]:
        bucket.put(key, b"{}")
    assert bucket.list() == ["a.json", "b/1.json", "b/2.json", "b/c/deep.json", "ba.json"]
    assert bucket.list("b/") == ["b/1.json", "b/2.json", "b/c/deep.json"]
    assert bucket.list("b") == ["b/1.json", "b/2.json", "b/c/deep.json", "ba.json"]
    assert bucket.list("b/c/") == ["b/c/deep.json"]
    assert bucket.list("b/1") == ["b/1.json"]
    assert bucket.list("nothing/") == []
    assert bucket.list("zzz") == []


def test_list_of_an_empty_area(bucket: Bucket) -> None:
    assert bucket.list() == []


def test_areas_are_separate(buckets: Buckets) -> None:
    buckets["requests"].put("r1.json", b"request")
    assert buckets["requests"].list() == ["r1.json"]
    for area in AREAS:
        if area != "requests":
            assert buckets[area].list() == []
            assert not buckets[area].exists("r1.json")
    assert buckets["job-properties"].area == "job-properties"
    first = buckets["requests"]
    assert buckets["requests"] is first  # one Bucket per area, not a new one per lookup


def test_delete(bucket: Bucket) -> None:
    bucket.put("x/y.json", b"1")
    bucket.put("x/z.json", b"2")
    bucket.delete("x/y.json")
    assert not bucket.exists("x/y.json")
    assert bucket.list() == ["x/z.json"]
    bucket.delete("x/y.json")  # already gone: not an error
    bucket.delete("never/was")


def test_a_folder_is_not_an_object(bucket: Bucket) -> None:
    bucket.put("folder/inner.json", b"1")
    assert not bucket.exists("folder")
    with pytest.raises(BucketError, match="no such object"):
        bucket.size("folder")
    with pytest.raises(BucketError, match="no such object"):
        bucket.open("folder")


def test_missing_object_is_a_bucket_error_naming_area_and_key(bucket: Bucket) -> None:
    for read in (bucket.get, bucket.open, bucket.size):
        with pytest.raises(BucketError) as info:
            read("missing/report.json")
        message = str(info.value)
        assert "'missing/report.json'" in message
        assert "'results'" in message
        assert "no such object" in message
        assert bucket.url("missing/report.json") in message
    assert isinstance(info.value, InputError)


def test_url(bucket: Bucket) -> None:
    bucket.put("a/b.json", b"1")
    url = bucket.url("a/b.json")
    if bucket.local_root is not None:
        assert url == (bucket.local_root / "a" / "b.json").as_uri()
        assert url.startswith("file:///")
        assert Path(url.removeprefix("file://")).read_bytes() == b"1"
    else:
        assert url.startswith(f"s3://{S3_BUCKET}/run-")
        assert url.endswith("/results/a/b.json")
    # The area itself, for messages.
    assert bucket.url("") + "a/b.json" == url


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "../x",
        "a/../b",
        "a/./b",
        ".",
        "a//b",
        "a/",
        "a\\b",
        "a\x00b",
        "a\nb",
        "x" * 1025,
        "é" * 513,  # 1026 bytes of UTF-8
        "a/.b.part",
    ],
)
def test_every_method_rejects_bad_keys(bucket: Bucket, key: str, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"1")
    calls = [
        lambda: bucket.put(key, b"1"),
        lambda: bucket.put_file(key, source),
        lambda: bucket.get(key),
        lambda: bucket.open(key),
        lambda: bucket.exists(key),
        lambda: bucket.size(key),
        lambda: bucket.delete(key),
    ]
    if key:  # url("") is the area's own URL
        calls.append(lambda: bucket.url(key))
    for call in calls:
        with pytest.raises(BucketError, match="invalid bucket key"):
            call()
    assert bucket.list() == []


def test_list_rejects_bad_prefixes(bucket: Bucket) -> None:
    for prefix in ["../", "/abs", "a//", "a/../"]:
        with pytest.raises(BucketError, match="invalid bucket key"):
            bucket.list(prefix)


def test_unknown_area(buckets: Buckets) -> None:
    with pytest.raises(BucketError, match="unknown bucket area 'uploads'") as info:
        buckets["uploads"]
    for area in AREAS:
        assert area in str(info.value)


# -- key validation -----------------------------------------------------------------


def test_validate_key_returns_good_keys() -> None:
    for key in ["a", "a/b/c.json", "2024-01-01/req 1.json", "é/ü", ".hidden", "a..b", "x" * 1024]:
        assert validate_key(key) == key


def test_validate_key_messages_say_why() -> None:
    cases = {
        "": "empty",
        "/abs": "relative",
        "a//b": "empty, '.' or '..' segment",
        "../x": "'..' segment",
        "a\\b": "backslash",
        "a\x00b": "control character",
        "x" * 2000: "longer than 1024 bytes",
    }
    for key, why in cases.items():
        with pytest.raises(BucketError, match="invalid bucket key") as info:
            validate_key(key)
        assert why in str(info.value)
    # A very long key is shortened in the message.
    with pytest.raises(BucketError) as info:
        validate_key("x" * 2000)
    assert len(str(info.value)) < 200


# -- local folders ------------------------------------------------------------------


def test_local_areas_live_under_the_data_dir(tmp_path: Path) -> None:
    buckets = open_buckets(Settings(data_dir=tmp_path / "data"))
    assert not (tmp_path / "data").exists()  # nothing is created before first use
    bucket = buckets["job-properties"]
    root = (tmp_path / "data" / "buckets" / "job-properties").resolve()
    assert bucket.local_root == root
    assert root.is_dir()
    bucket.put("active/version.txt", b"7")
    assert (root / "active" / "version.txt").read_bytes() == b"7"


def test_local_put_leaves_no_temp_files(tmp_path: Path) -> None:
    bucket = open_buckets(Settings(data_dir=tmp_path))["requests"]
    source = tmp_path / "src.bin"
    source.write_bytes(b"file")
    bucket.put("a/one.json", b"1")
    bucket.put_file("a/two.json", source)
    assert bucket.local_root is not None
    assert sorted(p.name for p in (bucket.local_root / "a").iterdir()) == ["one.json", "two.json"]


def test_a_crashed_writers_temp_file_is_invisible(tmp_path: Path) -> None:
    bucket = open_buckets(Settings(data_dir=tmp_path))["requests"]
    assert bucket.local_root is not None
    (bucket.local_root / "r").mkdir()
    # What a writer that died mid-put leaves behind.
    (bucket.local_root / "r" / ".req-1.json.0123456789ab.part").write_bytes(b'{"half')
    (bucket.local_root / ".top.json.0123456789ab.part").write_bytes(b"")
    bucket.put("r/req-2.json", b"{}")
    assert bucket.list() == ["r/req-2.json"]
    assert bucket.list("r/") == ["r/req-2.json"]
    assert not bucket.exists("r/req-1.json")


def test_a_failed_local_put_keeps_the_old_object_and_no_temp_file(tmp_path: Path) -> None:
    bucket = open_buckets(Settings(data_dir=tmp_path))["results"]
    assert bucket.local_root is not None
    bucket.put("a/b", b"inside a folder")
    # "a" is a folder, so an object cannot replace it.
    with pytest.raises(BucketError, match="cannot write 'a' in bucket area 'results'"):
        bucket.put("a", b"x")
    assert sorted(p.name for p in bucket.local_root.iterdir()) == ["a"]
    assert bucket.get("a/b") == b"inside a folder"


def test_local_readers_never_see_a_partial_object(tmp_path: Path) -> None:
    bucket = open_buckets(Settings(data_dir=tmp_path))["staging"]
    versions = [bytes([n]) * 2_000_000 for n in range(1, 4)]
    bucket.put("snapshot.bin", versions[0])
    stop = threading.Event()
    seen: list[bytes] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(bucket.get("snapshot.bin"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(30):
            bucket.put("snapshot.bin", versions[n % len(versions)])
    finally:
        stop.set()
        reader.join()
    assert seen
    assert all(data in versions for data in seen)


def test_local_put_under_an_object_is_a_bucket_error(tmp_path: Path) -> None:
    bucket = open_buckets(Settings(data_dir=tmp_path))["results"]
    bucket.put("a", b"an object, not a folder")
    with pytest.raises(BucketError, match="cannot write 'a/b' in bucket area 'results'"):
        bucket.put("a/b", b"x")
    assert bucket.list() == ["a"]


def test_local_area_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "buckets").write_bytes(b"a file where the folder should be")
    buckets = open_buckets(Settings(data_dir=tmp_path))
    with pytest.raises(BucketError, match=r"cannot create the folder .* for bucket area 'results'"):
        buckets["results"]


# -- S3 -----------------------------------------------------------------------------


def test_s3_objects_land_under_the_prefix_and_area(s3_endpoint: str, tmp_path: Path) -> None:
    prefix = f"run-{uuid.uuid4().hex[:12]}/nested"
    buckets = open_buckets(_s3_settings(s3_endpoint, tmp_path, f"s3://{S3_BUCKET}/{prefix}/"))
    bucket = buckets["artifacts"]
    assert bucket.local_root is None
    bucket.put("bundles/v1.zip", b"zip")
    client = _s3_client(s3_endpoint)
    stored = client.get_object(Bucket=S3_BUCKET, Key=f"{prefix}/artifacts/bundles/v1.zip")
    assert stored["Body"].read() == b"zip"
    assert bucket.url("bundles/v1.zip") == f"s3://{S3_BUCKET}/{prefix}/artifacts/bundles/v1.zip"
    # An object written by someone else shows up at once (no stale listing).
    assert bucket.list() == ["bundles/v1.zip"]
    client.put_object(Bucket=S3_BUCKET, Key=f"{prefix}/artifacts/bundles/v2.zip", Body=b"2")
    assert bucket.list() == ["bundles/v1.zip", "bundles/v2.zip"]
    assert not (tmp_path / "buckets").exists()


def test_s3_bucket_at_the_root_of_the_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    name = f"pt-root-{uuid.uuid4().hex[:8]}"
    _s3_client(s3_endpoint).create_bucket(Bucket=name)
    bucket = open_buckets(_s3_settings(s3_endpoint, tmp_path, f"s3://{name}"))["requests"]
    bucket.put("r.json", b"{}")
    assert bucket.url("r.json") == f"s3://{name}/requests/r.json"
    assert bucket.list() == ["r.json"]


def test_s3_missing_bucket_is_a_bucket_error(s3_endpoint: str, tmp_path: Path) -> None:
    settings = _s3_settings(s3_endpoint, tmp_path, f"s3://missing-bucket-{uuid.uuid4().hex[:8]}")
    bucket = open_buckets(settings)["results"]
    with pytest.raises(BucketError, match="cannot write 'x' in bucket area 'results'"):
        bucket.put("x", b"1")


def test_s3_unreachable_server_is_a_bucket_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # fail at once instead of retrying
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens here
    bucket = open_buckets(_s3_settings(endpoint, tmp_path, f"s3://{S3_BUCKET}/p"))["results"]
    with pytest.raises(BucketError, match=r"cannot read 'x' in bucket area 'results' at s3://"):
        bucket.get("x")


def test_missing_s3fs_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # what an install without s3fs looks like
    settings = Settings(data_dir=tmp_path, bucket_url="s3://b/p")
    with pytest.raises(ConfigError, match=r"pip install 'personatag\[s3\]'"):
        open_buckets(settings)


# -- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("/just/a/path", "unsupported scheme '(none)'"),
        ("s3://", "not of the form s3://BUCKET/PREFIX"),
        ("s3:///prefix", "not of the form s3://BUCKET/PREFIX"),
        ("s3://b/a//c", "empty, '.' or '..' segment"),
        ("s3://b/../c", "empty, '.' or '..' segment"),
    ],
)
def test_bad_bucket_url_is_a_config_error(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match="PERSONATAG_BUCKET_URL") as info:
        load_settings(bucket_url=url)
    assert why in str(info.value)


def test_bad_bucket_url_that_skipped_validation_fails_to_open(tmp_path: Path) -> None:
    settings = Settings.model_construct(data_dir=tmp_path, bucket_url="ftp://x/y")
    with pytest.raises(ConfigError, match="unsupported bucket URL 'ftp://x/y'"):
        open_buckets(settings)


def test_bucket_url_is_normalised() -> None:
    assert load_settings(bucket_url="s3://b/p/q/").bucket_url == "s3://b/p/q"
    assert load_settings(bucket_url="s3://b/").bucket_url == "s3://b"
    assert load_settings(bucket_url="").bucket_url is None


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PERSONATAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PERSONATAG_BUCKET_URL", "s3://my-bucket/personatag/")
    monkeypatch.setenv("PERSONATAG_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("PERSONATAG_S3_ACCESS_KEY", "AKIA-example")
    monkeypatch.setenv("PERSONATAG_S3_SECRET_KEY", "very-secret")
    monkeypatch.setenv("PERSONATAG_S3_REGION", "eu-west-1")
    settings = load_settings()
    assert settings.bucket_url == "s3://my-bucket/personatag"
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.s3_region == "eu-west-1"
    assert settings.s3_access_key is not None and settings.s3_secret_key is not None
    assert settings.s3_access_key.get_secret_value() == "AKIA-example"
    assert settings.s3_secret_key.get_secret_value() == "very-secret"
    # Secrets stay out of reprs and logs.
    assert "very-secret" not in repr(settings) and "AKIA-example" not in repr(settings)


def test_s3_settings_from_the_environment_reach_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_endpoint: str
) -> None:
    prefix = f"env-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("PERSONATAG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PERSONATAG_BUCKET_URL", f"s3://{S3_BUCKET}/{prefix}")
    monkeypatch.setenv("PERSONATAG_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("PERSONATAG_S3_ACCESS_KEY", S3_KEY)
    monkeypatch.setenv("PERSONATAG_S3_SECRET_KEY", S3_SECRET)
    monkeypatch.setenv("PERSONATAG_S3_REGION", S3_REGION)
    bucket = open_buckets(load_settings())["staging"]
    bucket.put("from-env.txt", b"ok")
    assert bucket.url("from-env.txt") == f"s3://{S3_BUCKET}/{prefix}/staging/from-env.txt"
    assert bucket.get("from-env.txt") == b"ok"


def test_local_is_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PERSONATAG_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("PERSONATAG_BUCKET_URL", raising=False)
    bucket = open_buckets(load_settings())["requests"]
    assert bucket.local_root == (tmp_path / "buckets" / "requests").resolve()
