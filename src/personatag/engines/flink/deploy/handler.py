"""The deploy handler: validate a bundle and make it active; scan; roll back.

Every operation here is idempotent or refuses with nothing changed; state
layout and history semantics are in ``deploy/state.py`` and docs/deploy.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from hashlib import sha256

from personatag.buckets import Buckets
from personatag.engines.flink.deploy import state as st
from personatag.engines.flink.deploy.layout import (
    BUNDLES_PREFIX,
    BundleError,
    bundle_key,
    check_actor,
    iso,
    parse_bundle_name,
)
from personatag.engines.flink.deploy.state import Deployment
from personatag.engines.flink.deploy.validate import inspect_bundle
from personatag.errors import ConflictError


@dataclass(frozen=True)
class ScanResult:
    """What one scan of the artifacts bucket did: bundles activated and refused (key, reason)."""

    deployed: list[Deployment] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def handle_artifact(
    buckets: Buckets, key: str, *, actor: str, now: datetime | None = None
) -> Deployment:
    """Validate the bundle at ``key`` (the zip or its ``.sha256``) and make it active.

    Idempotent: a bundle activated before is returned as it was, with nothing
    written. An invalid bundle raises BundleError, leaves active.json as it
    was and is recorded in ``rejected/<version>.json``.
    """
    actor = check_actor(actor)
    key = key.removesuffix(".sha256")
    artifacts, state = buckets["artifacts"], buckets["job-properties"]
    history = st.read_history(state)
    st.sync_active(state, st.undo_stack(history))
    for _, done in reversed(history):
        if done.artifact == key:
            return done

    name = parse_bundle_name(key.rsplit("/", 1)[-1])
    if name is None or key != bundle_key(name.version):
        raise BundleError(key, f"not a bundle key; expected {BUNDLES_PREFIX}personatag-job-*.zip")
    if not artifacts.exists(key):
        raise BundleError(key, "not found in the artifacts bucket")
    data = artifacts.get(key)
    checksum_text = st.checksum_text(artifacts, key)
    moment = st.stamp(now)
    try:
        inspect_bundle(key, data, checksum_text)
    except BundleError as exc:
        st.reject(
            state,
            {
                "version": name.version,
                "artifact": key,
                "reason": exc.problem,
                "rejected_at": iso(moment),
                "by": actor,
                "checksum_file": checksum_text,
                "size": len(data),
            },
        )
        raise
    deployment = Deployment(
        version=name.version,
        checksum=sha256(data).hexdigest(),
        deployed_at=moment,
        by=actor,
        artifact=key,
    )
    st.activate(state, history, deployment)
    return deployment


def scan_artifacts(buckets: Buckets, *, actor: str, now: datetime | None = None) -> ScanResult:
    """Handle every bundle not handled yet, oldest build first (what a watcher calls).

    Idempotent: activated bundles are skipped, and so are rejected ones unless
    their zip or checksum file changed since (e.g. a ``.sha256`` that arrived
    late). Keys in artifacts that are not bundles are ignored.
    """
    actor = check_actor(actor)
    artifacts, state = buckets["artifacts"], buckets["job-properties"]
    history = st.read_history(state)
    st.sync_active(state, st.undo_stack(history))
    handled = {d.artifact for _, d in history}
    rejections = st.read_rejections(state)
    todo = []
    for key in artifacts.list(BUNDLES_PREFIX):
        name = parse_bundle_name(key.rsplit("/", 1)[-1])
        if name is None or key != bundle_key(name.version) or key in handled:
            continue
        refused = rejections.get(name.version)
        if (
            refused is not None
            and refused.get("checksum_file") == st.checksum_text(artifacts, key)
            and refused.get("size") == artifacts.size(key)
        ):
            continue
        todo.append((name.created_at, name.version, key))
    result = ScanResult()
    for _, _, key in sorted(todo):
        try:
            result.deployed.append(handle_artifact(buckets, key, actor=actor, now=now))
        except BundleError as exc:
            result.rejected.append((key, exc.problem))
    return result


def rollback(buckets: Buckets, *, actor: str, now: datetime | None = None) -> Deployment:
    """Make the version active before the current one active again.

    History is an undo stack: rolling back twice goes two versions back, and a
    deploy after a rollback is undone by the next rollback. The target must
    still validate (and be byte-identical to when it was deployed); otherwise
    BundleError and nothing changes.
    """
    actor = check_actor(actor)
    artifacts, state = buckets["artifacts"], buckets["job-properties"]
    history = st.read_history(state)
    stack = st.undo_stack(history)
    st.sync_active(state, stack)
    if not stack:
        raise ConflictError("nothing is deployed, so there is nothing to roll back to")
    if len(stack) < 2:
        raise ConflictError(
            f"{stack[-1].version} is the earliest deployed version; there is nothing before it"
            " to roll back to"
        )
    target = stack[-2]
    key = target.artifact
    if not artifacts.exists(key):
        raise BundleError(key, f"cannot roll back to {target.version}: the bundle is gone")
    data = artifacts.get(key)
    try:
        inspect_bundle(key, data, st.checksum_text(artifacts, key))
    except BundleError as exc:
        raise BundleError(
            key, f"cannot roll back to {target.version}: {exc.problem}; nothing changed"
        ) from None
    if sha256(data).hexdigest() != target.checksum:
        raise BundleError(
            key,
            f"cannot roll back to {target.version}: the zip changed since it was deployed"
            f" (its sha256 is no longer {target.checksum[:16]}...); nothing changed",
        )
    deployment = Deployment(
        version=target.version,
        checksum=target.checksum,
        deployed_at=st.stamp(now),
        by=actor,
        artifact=key,
        rollback=True,
    )
    st.activate(state, history, deployment)
    return deployment
