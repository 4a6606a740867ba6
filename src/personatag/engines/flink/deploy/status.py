"""Read the deploy state: the active bundle (for jobs and engines) and the bundle list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256
from typing import Any, Literal

from personatag.buckets import Buckets
from personatag.engines.flink.deploy import state as st
from personatag.engines.flink.deploy.layout import (
    BUNDLES_PREFIX,
    BundleError,
    bundle_key,
    iso,
    parse_bundle_name,
)
from personatag.engines.flink.deploy.state import ACTIVE_KEY, Deployment
from personatag.engines.flink.deploy.validate import inspect_bundle, parse_checksum
from personatag.errors import ConflictError

State = Literal["deployed", "rejected", "pending"]


@dataclass(frozen=True)
class BundleStatus:
    """A bundle in the artifacts bucket as ``deploy --list`` shows it.

    ``state``: ``deployed`` (activated at least once), ``rejected`` (refused;
    see ``reason``) or ``pending`` (not handled yet). ``checksum`` is what its
    ``.sha256`` file says (None when missing); it is not re-verified here.
    """

    version: str
    artifact: str
    checksum: str | None
    created_at: datetime
    size: int
    active: bool
    state: State
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "artifact": self.artifact,
            "checksum": self.checksum,
            "created_at": iso(self.created_at),
            "size": self.size,
            "active": self.active,
            "state": self.state,
            "reason": self.reason,
        }


def active_bundle(buckets: Buckets) -> dict[str, Any] | None:
    """The contents of ``active.json`` (version, checksum, deployed_at, by, artifact,
    rollback), or None when nothing has been deployed. Jobs record its ``version``."""
    state = buckets["job-properties"]
    if not state.exists(ACTIVE_KEY):
        return None
    return Deployment.from_json(st.load_json(state, ACTIVE_KEY), ACTIVE_KEY).to_json()


def fetch_active(buckets: Buckets) -> tuple[Deployment, bytes]:
    """The active deployment and its zip, verified, for an engine about to run it.

    Raises ConflictError when nothing is deployed and BundleError when the zip
    no longer matches the checksum recorded at activation or fails validation.
    """
    state, artifacts = buckets["job-properties"], buckets["artifacts"]
    if not state.exists(ACTIVE_KEY):
        raise ConflictError("no job bundle is deployed; run `personatag deploy`")
    active = Deployment.from_json(st.load_json(state, ACTIVE_KEY), ACTIVE_KEY)
    if not artifacts.exists(active.artifact):
        raise BundleError(active.artifact, "the active bundle is gone from the artifacts bucket")
    data = artifacts.get(active.artifact)
    if sha256(data).hexdigest() != active.checksum:
        raise BundleError(
            active.artifact,
            "the zip no longer matches the checksum recorded when it was deployed; deploy again",
        )
    inspect_bundle(active.artifact, data, st.checksum_text(artifacts, active.artifact))
    return active, data


def list_bundles(buckets: Buckets) -> list[BundleStatus]:
    """Every bundle in the artifacts bucket, oldest build first."""
    artifacts, state = buckets["artifacts"], buckets["job-properties"]
    active = active_bundle(buckets)
    deployed = {d.artifact for _, d in st.read_history(state)}
    rejections = st.read_rejections(state)
    found = []
    for key in artifacts.list(BUNDLES_PREFIX):
        name = parse_bundle_name(key.rsplit("/", 1)[-1])
        if name is None or key != bundle_key(name.version):
            continue
        text = st.checksum_text(artifacts, key)
        try:
            checksum = None if text is None else parse_checksum(text, key.rsplit("/", 1)[-1])
        except ValueError:
            checksum = None
        refused = rejections.get(name.version)
        status: State = (
            "deployed" if key in deployed else "rejected" if refused is not None else "pending"
        )
        found.append(
            BundleStatus(
                version=name.version,
                artifact=key,
                checksum=checksum,
                created_at=name.created_at,
                size=artifacts.size(key),
                active=active is not None and active["artifact"] == key,
                state=status,
                reason=str(refused["reason"]) if status == "rejected" and refused else None,
            )
        )
    return sorted(found, key=lambda b: (b.created_at, b.version))
