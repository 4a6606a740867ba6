"""What a job bundle is: its name and version, ``job.properties.json``, engine properties.

A bundle is ``personatag-job-<version>.zip`` holding the ``personatag`` package
tree and ``job.properties.json`` (who built it, when, from which code, with
which engine properties, and a manifest of every file with its sha256 and size).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

import personatag
from personatag import times
from personatag.errors import InputError

FORMAT: Literal[1] = 1  # of job.properties.json and the zip layout
PACKAGE = "personatag"
PROPERTIES_FILE = "job.properties.json"
BUNDLES_PREFIX = "bundles/"

_NAME_RE = re.compile(
    r"^personatag-job-(?P<version>(?P<base>[0-9A-Za-z.]+)-(?P<stamp>\d{14})-(?P<hash>[0-9a-f]{8}))\.zip$"
)
_PROPERTY_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
_SHA256_RE = r"^[0-9a-f]{64}$"


class BundleError(InputError):
    """A bundle is missing, malformed or tampered with; names the bundle and the problem."""

    def __init__(self, bundle: str, problem: str) -> None:
        super().__init__(f"bundle {bundle}: {problem}")
        self.bundle = bundle
        self.problem = problem


# --- engine properties ------------------------------------------------------


def check_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """Validate engine properties; return a sorted, independent copy.

    Names are lower-case (``parallelism``, ``taskmanager.memory``); values are
    JSON (null, booleans, finite numbers, strings, lists, objects with string keys).
    """
    if not isinstance(properties, Mapping):
        raise InputError("engine properties must be a mapping of name to value")
    for key, value in properties.items():
        if not isinstance(key, str) or not _PROPERTY_RE.match(key):
            raise InputError(
                f"engine property name {key!r} is invalid: use lower-case letters, digits,"
                " '_', '.' or '-', starting with a letter (e.g. 'parallelism')"
            )
        _check_json(value, key)
    copied: dict[str, Any] = json.loads(json.dumps(dict(properties), sort_keys=True))
    return copied


def _check_json(value: object, where: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"engine property {where}: {value} is not a JSON number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise InputError(f"engine property {where}: key {k!r} is not a string")
            _check_json(item, f"{where}.{k}")
        return
    raise InputError(
        f"engine property {where}: a value of type {type(value).__name__} is not JSON"
        " (use null, true/false, numbers, strings, lists or objects)"
    )


def _no_constant(text: str) -> object:
    raise ValueError(text)


def parse_properties(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` options (``--property``) into checked engine properties.

    VALUE is read as JSON when it parses (``4``, ``true``, ``[1, 2]``,
    ``"4"``) and kept as a plain string otherwise (``fast``).
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"property {item!r}: expected KEY=VALUE, e.g. parallelism=4")
        if key in parsed:
            raise InputError(f"property {key!r} is given twice")
        try:
            value: Any = json.loads(raw, parse_constant=_no_constant)
        except ValueError:
            value = raw
        parsed[key] = value
    return check_properties(parsed)


# --- job.properties.json ----------------------------------------------------


class ManifestEntry(BaseModel):
    """One file of the bundle: its path inside the zip, sha256 (hex) and size in bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    path: str
    sha256: str = Field(pattern=_SHA256_RE)
    size: int = Field(ge=0)


class JobProperties(BaseModel):
    """The contents of ``job.properties.json`` (format 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal[1]
    version: str
    content_hash: str = Field(pattern=_SHA256_RE)
    personatag_version: str
    created_at: AwareDatetime
    created_by: str = Field(min_length=1)
    python: str
    properties: dict[str, Any]
    files: list[ManifestEntry]

    @field_validator("properties")
    @classmethod
    def _engine_properties(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            return check_properties(value)
        except InputError as exc:
            raise ValueError(str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        doc = self.model_dump(mode="json")
        doc["created_at"] = iso(self.created_at)
        return doc


def read_properties(text: bytes) -> JobProperties:
    """Parse ``job.properties.json``; raise ValueError with a one-line reason."""
    try:
        raw = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError("is not a JSON object")
    fmt = raw.get("format")
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > FORMAT:
        raise ValueError(
            f"has format {fmt}, newer than this personatag reads ({FORMAT}); upgrade personatag"
        )
    try:
        return JobProperties.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}"
            for e in exc.errors()[:3]
        )
        more = len(exc.errors()) - 3
        raise ValueError(
            f"is malformed: {problems}" + (f" (and {more} more)" if more > 0 else "")
        ) from None


# --- names, versions and hashes ---------------------------------------------


@dataclass(frozen=True)
class BundleName:
    """What a bundle's file name says: its version, build time and content-hash prefix."""

    version: str
    created_at: datetime
    hash_prefix: str


def parse_bundle_name(name: str) -> BundleName | None:
    """``personatag-job-<version>.zip`` -> its parts, or None for any other name."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    try:
        created = datetime.strptime(m["stamp"], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return BundleName(m["version"], created, m["hash"])


def bundle_key(version: str) -> str:
    """The key of a bundle in the artifacts bucket."""
    return f"{BUNDLES_PREFIX}personatag-job-{version}.zip"


def make_version(created_at: datetime, content_hash: str) -> str:
    """``<personatag version>-<UTC yyyymmddHHMMSS>-<first 8 hex of the content hash>``."""
    # '+' (a PEP 440 local version) and other characters are not safe in every
    # object-store URL, so anything outside [0-9A-Za-z.] becomes '.'.
    base = re.sub(r"[^0-9A-Za-z.]", ".", personatag.__version__)
    return f"{base}-{created_at.astimezone(UTC):%Y%m%d%H%M%S}-{content_hash[:8]}"


def content_hash(files: Sequence[ManifestEntry], properties: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest and the engine properties.

    Covers what decides how the job runs (every file and every property), not
    who built it or when, so the same code and properties give the same hash.
    """
    doc = {
        "format": FORMAT,
        "files": [[f.path, f.sha256, f.size] for f in files],
        "properties": dict(properties),
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return sha256(canonical.encode("ascii")).hexdigest()


def checksum_line(checksum: str, name: str) -> bytes:
    """The ``.sha256`` file: the ``sha256sum`` format, so ``sha256sum -c`` checks it too."""
    return f"{checksum}  {name}\n".encode()


def iso(moment: datetime) -> str:
    """UTC, second precision, with a ``Z``: ``2026-06-30T12:00:00Z``."""
    return times.iso(moment.astimezone(UTC), "seconds")


def check_actor(actor: str) -> str:
    """The actor, trimmed; InputError when empty."""
    if not isinstance(actor, str) or not actor.strip():
        raise InputError("an actor (who is deploying) is required; set PERSONATAG_ACTOR")
    return actor.strip()
