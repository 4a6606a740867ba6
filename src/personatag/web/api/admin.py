"""/deploy (job bundles) and /audit (the audit log): admin only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from personatag.audit_log import list_events, record_now
from personatag.domain import MAX_AS_OF, MIN_AS_OF
from personatag.engines.flink import deploy as dp
from personatag.engines.flink.deploy.layout import check_properties
from personatag.errors import InputError
from personatag.web.api.deps import BucketsDep, StoreDep
from personatag.web.auth import CurrentUser, role
from personatag.web.schemas import AuditEvents, DeployRequest, Time

router = APIRouter(tags=["admin"])


class DeployState(BaseModel):
    active: dict[str, Any] | None
    bundles: list[dict[str, Any]]


@router.get("/deploy", response_model=DeployState, **role("admin"))
def deploy_list(buckets: BucketsDep) -> dict[str, Any]:
    """The active bundle and every bundle (version, checksum, state), oldest first."""
    return {
        "active": dp.active_bundle(buckets),
        "bundles": [b.to_json() for b in dp.list_bundles(buckets)],
    }


@router.post("/deploy", response_model=dict[str, Any], **role("admin", errors=(409,)))
def deploy_run(
    body: DeployRequest, buckets: BucketsDep, store: StoreDep, who: CurrentUser
) -> dict[str, Any]:
    """Build a job bundle with these engine properties and make it active, or with
    `rollback: true` make the previous version active again."""
    actor = who.user.username
    if body.rollback:
        if body.properties:
            raise InputError("give properties or rollback, not both")
        done = dp.rollback(buckets, actor=actor)
    else:
        props = check_properties(body.properties)
        done = dp.deploy(buckets, properties=props, actor=actor)
    out = done.to_json()
    action = "deploy.rollback" if body.rollback else "deploy"
    record_now(store, actor=actor, action=action, target=done.version, detail=out, source="api")
    return out


@router.get("/audit", response_model=AuditEvents, **role("admin"))
def audit(
    store: StoreDep,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[
        str | None, Query(max_length=100, description="exact, or a prefix ending in `.*`")
    ] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[Time | None, Query(description="inclusive; ISO-8601")] = None,
    until: Annotated[Time | None, Query(description="exclusive; ISO-8601")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_seq: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="page back: the smallest seq seen")
    ] = None,
) -> dict[str, Any]:
    """Audit events, newest first: who did what to which thing, from where."""
    events = list_events(
        store,
        actor=actor,
        action=action,
        target=target,
        since=_utc(since),
        until=_utc(until),
        limit=limit,
        before_seq=before_seq,
    )
    return {"events": events}


def _utc(value: datetime | None) -> datetime | None:
    """An aware UTC time (no offset given means UTC), moved into the store's range:
    as a filter bound, a time before 1900 or after 8999 selects what the nearest
    storable time does (nothing in the log is outside that range)."""
    if value is None:
        return None
    try:
        value = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:  # an offset took it past year 1 or 9999
        value = MIN_AS_OF if value.year < 5000 else MAX_AS_OF
    return min(max(value, MIN_AS_OF), MAX_AS_OF - timedelta(microseconds=1))
