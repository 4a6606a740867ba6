"""Deploy state in the job-properties bucket: the active bundle, history, rejections.

- ``active.json``: the active bundle (what jobs run and record);
- ``history/<seq>-<version>.json``: one object per activation, oldest first;
- ``rejected/<version>.json``: why a bundle was refused.

Each activation is its own object because object stores cannot append: a
read-modify-write of one history file would lose an entry whenever two
handlers race, while two handlers writing the same activation write the same key.
History is written before ``active.json``; ``sync_active`` repairs a crash between.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from personatag.buckets import Bucket
from personatag.domain import utcnow
from personatag.engines.flink.deploy.layout import iso
from personatag.errors import InputError

ACTIVE_KEY = "active.json"
HISTORY_PREFIX = "history/"
REJECTED_PREFIX = "rejected/"
_HISTORY_RE = re.compile(r"^(?P<seq>\d{8})-(?P<version>[^/]+)\.json$")


@dataclass(frozen=True)
class Deployment:
    """One activation of a bundle; ``checksum`` is the sha256 of its zip."""

    version: str
    checksum: str
    deployed_at: datetime
    by: str
    artifact: str
    rollback: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "checksum": self.checksum,
            "deployed_at": iso(self.deployed_at),
            "by": self.by,
            "artifact": self.artifact,
            "rollback": self.rollback,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], where: str) -> Deployment:
        try:
            deployed_at = datetime.fromisoformat(str(doc["deployed_at"]))
            if deployed_at.tzinfo is None:
                raise ValueError("deployed_at has no time zone")
            return cls(
                version=str(doc["version"]),
                checksum=str(doc["checksum"]),
                deployed_at=deployed_at.astimezone(UTC),
                by=str(doc["by"]),
                artifact=str(doc["artifact"]),
                rollback=bool(doc.get("rollback", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"job-properties/{where} is malformed ({exc!r}); fix or remove it"
            ) from None


def stamp(now: datetime | None) -> datetime:
    # Records keep whole seconds; a Deployment returned now equals one read back later.
    return (now or utcnow()).astimezone(UTC).replace(microsecond=0)


def dump_json(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def load_json(bucket: Bucket, key: str) -> dict[str, Any]:
    try:
        doc = json.loads(bucket.get(key))
    except ValueError as exc:
        raise InputError(
            f"{bucket.area}/{key} is not valid JSON ({exc}); fix or remove it"
        ) from None
    if not isinstance(doc, dict):
        raise InputError(f"{bucket.area}/{key} is not a JSON object; fix or remove it")
    return doc


def read_history(state: Bucket) -> list[tuple[int, Deployment]]:
    """Every activation, oldest first, with its sequence number."""
    found = []
    for key in state.list(HISTORY_PREFIX):
        m = _HISTORY_RE.match(key[len(HISTORY_PREFIX) :])
        if m is not None:
            found.append((int(m["seq"]), key, Deployment.from_json(load_json(state, key), key)))
    return [(seq, d) for seq, _, d in sorted(found, key=lambda f: (f[0], f[1]))]


def undo_stack(history: list[tuple[int, Deployment]]) -> list[Deployment]:
    """Replay activations as an undo stack: a deploy pushes, a rollback pops.

    A rollback record replaces the two entries it undid (the version rolled
    back from and the older activation of the version it returned to), so the
    next rollback goes one further back.
    """
    stack: list[Deployment] = []
    for _, d in history:
        if d.rollback and stack:
            stack.pop()
            if stack:
                stack.pop()
        stack.append(d)
    return stack


def sync_active(state: Bucket, stack: list[Deployment]) -> None:
    # History is written before active.json; a crash between the two leaves
    # active.json behind, and the next handler call repairs it.
    if not stack:
        return
    want = stack[-1].to_json()
    if not state.exists(ACTIVE_KEY) or load_json(state, ACTIVE_KEY) != want:
        state.put(ACTIVE_KEY, dump_json(want))


def activate(state: Bucket, history: list[tuple[int, Deployment]], d: Deployment) -> None:
    seq = history[-1][0] + 1 if history else 1
    state.put(f"{HISTORY_PREFIX}{seq:08d}-{d.version}.json", dump_json(d.to_json()))
    state.put(ACTIVE_KEY, dump_json(d.to_json()))
    rejected = f"{REJECTED_PREFIX}{d.version}.json"
    if state.exists(rejected):
        state.delete(rejected)


def checksum_text(artifacts: Bucket, key: str) -> str | None:
    if not artifacts.exists(key + ".sha256"):
        return None
    return artifacts.get(key + ".sha256").decode("utf-8", "replace")


def read_rejections(state: Bucket) -> dict[str, dict[str, Any]]:
    found = {}
    for key in state.list(REJECTED_PREFIX):
        if key.endswith(".json"):
            found[key[len(REJECTED_PREFIX) : -len(".json")]] = load_json(state, key)
    return found


def reject(state: Bucket, record: dict[str, Any]) -> None:
    key = f"{REJECTED_PREFIX}{record['version']}.json"
    same = ("artifact", "reason", "checksum_file", "size")
    if state.exists(key):
        old = load_json(state, key)
        if all(old.get(k) == record[k] for k in same):
            return  # the same bundle refused for the same reason: keep the first trace
    state.put(key, dump_json(record))
