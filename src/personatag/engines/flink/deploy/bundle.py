"""Build a job bundle: the job code and its properties in one reproducible, checksummed zip.

The same sources, engine properties, build time (to the second) and builder
give the same zip bytes: entries are sorted and carry fixed times and modes.
"""

from __future__ import annotations

import io
import json
import platform
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import personatag
from personatag.buckets import Buckets
from personatag.domain import utcnow
from personatag.engines.flink.deploy.layout import (
    FORMAT,
    PACKAGE,
    PROPERTIES_FILE,
    JobProperties,
    ManifestEntry,
    bundle_key,
    check_actor,
    check_properties,
    checksum_line,
    content_hash,
    iso,
    make_version,
)
from personatag.errors import ConflictError, InputError

# 1980-01-01 is the earliest time a zip entry can carry; any fixed value makes
# the archive independent of the source files' modification times.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_UNIX = 3  # zip "made by" system; fixed so a build on any OS gives the same bytes
_FILE_MODE = 0o100644


def default_package_dir() -> Path:
    """The source tree of the running personatag package."""
    return Path(personatag.__file__).resolve().parent


def read_package(package_dir: Path) -> list[tuple[str, bytes]]:
    """Every file of the package tree as (path inside the zip, bytes), sorted by path.

    Skips caches and compiled files (``__pycache__``, ``*.pyc``), hidden files
    and editor backups (``*~``); keeps package data (migrations, templates, schemas).
    """
    if not (package_dir / "__init__.py").is_file():
        raise InputError(f"{package_dir} is not a Python package (no __init__.py)")
    files = []
    for path in package_dir.rglob("*"):
        rel = path.relative_to(package_dir)
        if any(p == "__pycache__" or p.startswith(".") for p in rel.parts):
            continue
        if path.suffix in (".pyc", ".pyo") or path.name.endswith("~") or not path.is_file():
            continue
        files.append((f"{PACKAGE}/{rel.as_posix()}", path.read_bytes()))
    return sorted(files)


def zip_bytes(entries: Iterable[tuple[str, bytes]]) -> bytes:
    """A zip of the entries, sorted by name, with fixed times and modes (reproducible)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.create_system = _UNIX
            info.external_attr = _FILE_MODE << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def dump_properties(props: JobProperties) -> bytes:
    return (json.dumps(props.to_json(), indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class BundleInfo:
    """A built bundle: where it is and what it holds. ``checksum`` is the zip's sha256."""

    version: str
    key: str
    checksum: str
    size: int
    content_hash: str
    created_at: datetime
    created_by: str
    personatag_version: str
    properties: dict[str, Any]
    files: int

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "artifact": self.key,
            "checksum": self.checksum,
            "size": self.size,
            "content_hash": self.content_hash,
            "created_at": iso(self.created_at),
            "created_by": self.created_by,
            "personatag_version": self.personatag_version,
            "properties": self.properties,
            "files": self.files,
        }


def build_bundle(
    buckets: Buckets,
    *,
    properties: Mapping[str, Any],
    actor: str,
    now: datetime | None = None,
    package_dir: Path | None = None,
) -> BundleInfo:
    """Build a bundle of ``package_dir`` (default: this personatag) into the artifacts bucket.

    Writes ``bundles/personatag-job-<version>.zip`` and its ``.sha256`` (the
    checksum first, so a handler woken by the zip finds it). Building the same
    sources with the same properties, time (to the second) and actor again
    rewrites nothing; a different bundle under the same name is a ConflictError.
    """
    actor = check_actor(actor)
    engine = check_properties(properties)
    files = read_package(package_dir or default_package_dir())
    manifest = [ManifestEntry(path=p, sha256=sha256(d).hexdigest(), size=len(d)) for p, d in files]
    digest = content_hash(manifest, engine)
    created = (now or utcnow()).astimezone(UTC).replace(microsecond=0)
    version = make_version(created, digest)
    props = JobProperties(
        format=FORMAT,
        version=version,
        content_hash=digest,
        personatag_version=personatag.__version__,
        created_at=created,
        created_by=actor,
        python=platform.python_version(),
        properties=engine,
        files=manifest,
    )
    data = zip_bytes([(PROPERTIES_FILE, dump_properties(props)), *files])
    checksum = sha256(data).hexdigest()
    key = bundle_key(version)
    artifacts = buckets["artifacts"]
    exists = artifacts.exists(key)
    if exists and artifacts.get(key) != data:
        raise ConflictError(
            f"bundle {key} already exists with different contents (another build in the"
            " same second); build again"
        )
    if not (exists and artifacts.exists(key + ".sha256")):
        artifacts.put(key + ".sha256", checksum_line(checksum, key.rsplit("/", 1)[-1]))
    if not exists:
        artifacts.put(key, data)
    return BundleInfo(
        version=version,
        key=key,
        checksum=checksum,
        size=len(data),
        content_hash=digest,
        created_at=created,
        created_by=actor,
        personatag_version=personatag.__version__,
        properties=engine,
        files=len(manifest),
    )
