"""Validate a bundle before it may run: checksum, zip, properties, manifest, paths."""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from collections.abc import Sequence
from hashlib import sha256

from personatag.engines.flink.deploy.layout import (
    PACKAGE,
    PROPERTIES_FILE,
    BundleError,
    JobProperties,
    content_hash,
    parse_bundle_name,
    read_properties,
)

_CHECKSUM_RE = re.compile(r"^(?P<sum>[0-9a-f]{64})(?:[ \t]+\*?(?P<name>\S.*))?$")
_SYMLINK = 0o120000
_FILE_TYPE = 0o170000
# A real manifest of a few hundred files is tens of KB; refuse to parse a huge one.
MAX_PROPERTIES_SIZE = 16 * 1024 * 1024


def _some(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def parse_checksum(text: str, name: str) -> str:
    """The sha256 in a ``.sha256`` file (``<hex>  <name>``, or the hex alone)."""
    m = _CHECKSUM_RE.match(text.strip())
    if m is None:
        raise ValueError(f"expected '<64 lower-case hex digits>  {name}'")
    if m["name"] is not None and m["name"].strip() != name:
        raise ValueError(f"it is for {m['name'].strip()!r}, not {name!r}")
    return m["sum"]


def unsafe_path(path: str) -> str | None:
    """Why a path inside a bundle could escape the bundle root (zip-slip), or None."""
    if not path:
        return "has an empty name"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return "is an absolute path"
    if "\\" in path:
        return "contains a backslash"
    if any(ord(c) < 32 for c in path):
        return "contains a control character"
    parts = path.split("/")
    if ".." in parts:
        return "climbs out of the bundle ('..')"
    if "." in parts or "" in parts[:-1]:
        return "is not a normalised path ('.' or '//')"
    return None


def inspect_bundle(key: str, data: bytes, checksum_text: str | None) -> JobProperties:
    """Check a bundle completely; return its properties or raise BundleError.

    ``checksum_text`` is the content of the ``.sha256`` file next to it (None:
    missing). Checks, in order: the name, the checksum, that the zip opens,
    that no entry can escape the bundle root, ``job.properties.json``, that the
    zip holds exactly the manifest's files with their sizes and sha256, and
    that the content hash and the version agree with them.
    """
    name = key.rsplit("/", 1)[-1]
    parsed = parse_bundle_name(name)
    if parsed is None:
        raise BundleError(
            key, "not a bundle name; expected personatag-job-<version>.zip from `personatag deploy`"
        )
    if checksum_text is None:
        raise BundleError(key, f"checksum file {name}.sha256 is missing next to it")
    try:
        expected = parse_checksum(checksum_text, name)
    except ValueError as exc:
        raise BundleError(key, f"checksum file {name}.sha256 is malformed: {exc}") from None
    actual = sha256(data).hexdigest()
    if actual != expected:
        raise BundleError(
            key,
            f"checksum mismatch: {name}.sha256 says {expected[:16]}..., the zip hashes to"
            f" {actual[:16]}...; the bundle was altered or truncated, build it again",
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise BundleError(key, f"not a readable zip file ({exc})") from None
    with archive:
        return _inspect_archive(key, archive, parsed.version, parsed.hash_prefix)


def _inspect_archive(
    key: str, archive: zipfile.ZipFile, version: str, hash_prefix: str
) -> JobProperties:
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        problem = unsafe_path(info.filename)
        if problem:
            raise BundleError(
                key, f"entry {info.filename!r} {problem}; every entry must stay inside the bundle"
            )
        if (info.external_attr >> 16) & _FILE_TYPE == _SYMLINK:
            raise BundleError(key, f"entry {info.filename!r} is a symbolic link")
        if info.filename in entries:
            raise BundleError(key, f"entry {info.filename!r} appears more than once")
        entries[info.filename] = info

    if PROPERTIES_FILE not in entries:
        raise BundleError(key, f"{PROPERTIES_FILE} is missing")
    if entries[PROPERTIES_FILE].file_size > MAX_PROPERTIES_SIZE:
        raise BundleError(key, f"{PROPERTIES_FILE} is larger than {MAX_PROPERTIES_SIZE} bytes")
    try:
        props = read_properties(_read(key, archive, entries[PROPERTIES_FILE]))
    except ValueError as exc:
        raise BundleError(key, f"{PROPERTIES_FILE} {exc}") from None
    if props.version != version:
        raise BundleError(
            key, f"{PROPERTIES_FILE} says version {props.version!r}, the file name {version!r}"
        )

    manifest: set[str] = set()
    for entry in props.files:
        problem = unsafe_path(entry.path)
        if problem:
            raise BundleError(key, f"manifest path {entry.path!r} {problem}")
        if not entry.path.startswith(PACKAGE + "/"):
            raise BundleError(key, f"manifest path {entry.path!r} is outside {PACKAGE}/")
        if entry.path in manifest:
            raise BundleError(key, f"manifest lists {entry.path!r} more than once")
        manifest.add(entry.path)
    if PACKAGE + "/__init__.py" not in manifest:
        raise BundleError(key, f"manifest has no {PACKAGE}/__init__.py; this is not the job code")

    missing = sorted(manifest - entries.keys())
    if missing:
        raise BundleError(key, f"file(s) in the manifest but not in the zip: {_some(missing)}")
    extra = sorted(entries.keys() - manifest - {PROPERTIES_FILE})
    if extra:
        raise BundleError(key, f"unexpected file(s) not in the manifest: {_some(extra)}")

    for entry in props.files:
        info = entries[entry.path]
        if info.file_size != entry.size:
            raise BundleError(
                key,
                f"{entry.path} is {info.file_size} bytes in the zip, {entry.size} in the manifest",
            )
        digest = sha256(_read(key, archive, info)).hexdigest()
        if digest != entry.sha256:
            raise BundleError(key, f"{entry.path} does not match its sha256 in the manifest")

    digest = content_hash(props.files, props.properties)
    if digest != props.content_hash:
        raise BundleError(
            key,
            f"content hash mismatch: {PROPERTIES_FILE} says {props.content_hash[:16]}...,"
            f" its manifest and properties hash to {digest[:16]}...",
        )
    if digest[:8] != hash_prefix:
        raise BundleError(
            key, f"the version's hash part {hash_prefix} is not the content hash {digest[:8]}"
        )
    return props


def _read(key: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        NotImplementedError,  # an unsupported compression method
        RuntimeError,  # an encrypted entry
        ValueError,
    ) as exc:
        raise BundleError(key, f"entry {info.filename!r} is corrupt ({exc})") from None
