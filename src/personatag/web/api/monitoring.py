"""/monitoring/*: the figures behind the Monitoring page's charts (viewer).

Each counts in SQL per UTC day (or hour) and answers a dense series, oldest
first, zeros on quiet days, so what a chart draws is what the store holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from personatag.config import Settings
from personatag.definitions.personas import get_persona, list_personas
from personatag.domain import utcnow
from personatag.jobs import stats
from personatag.memberships.stats import moves_daily
from personatag.store import Store
from personatag.store.types import DAY_US, HOUR_US, to_micros
from personatag.web.api.deps import SettingsDep, StoreDep
from personatag.web.auth import role

router = APIRouter(prefix="/monitoring", tags=["monitoring"])

Days = Annotated[int, Query(ge=1, le=366, description="how many UTC days, today included")]
Hours = Annotated[int, Query(ge=1, le=744, description="how many hours back, this one included")]


class JobsDay(BaseModel):
    day: str = Field(description="the UTC day, YYYY-MM-DD")
    succeeded: int
    partial: int
    failed: int
    cancelled: int
    mean_seconds: float | None = Field(description="mean run time (started to finished), s")
    max_seconds: float | None = Field(description="longest run time, s")


class JobsDaily(BaseModel):
    days: list[JobsDay] = Field(description="jobs by the day they ended, oldest first")


class RequestsDay(BaseModel):
    day: str
    requests: int
    dry_runs: int


class RequestsDaily(BaseModel):
    days: list[RequestsDay]


class RequestsHour(BaseModel):
    hour: str = Field(description="the UTC hour, YYYY-MM-DD HH:00")
    requests: int
    dry_runs: int


class RequestsHourly(BaseModel):
    hours: list[RequestsHour]


class MovesDay(BaseModel):
    day: str
    entered: int = Field(description="contacts that entered a persona that day")
    exited: int = Field(description="contacts that exited a persona that day")


class MembershipsDaily(BaseModel):
    persona: str | None = Field(description="the persona counted; null: all of them")
    days: list[MovesDay]


class PersonaSize(BaseModel):
    key: str
    name: str
    category: str
    members: int


class PersonaSizes(BaseModel):
    personas: list[PersonaSize] = Field(description="active personas, largest first")


class StreamSample(BaseModel):
    at: datetime
    offset: int
    head: int
    lag_changes: int = Field(description="feed rows written but not yet consumed")
    lag_seconds: float = Field(description="age of the oldest unconsumed feed row, s")
    changes: int
    span_s: float = Field(description="seconds the sample's `changes` were counted over")
    changes_per_s: float
    evaluations_per_s: float


class StreamHistory(BaseModel):
    running: bool = Field(description="the stream processor stored a sample lately")
    sample_s: float = Field(description="seconds between samples (PERSONATAG_STREAM_SAMPLE_S)")
    last_sample_at: datetime | None
    samples: list[StreamSample] = Field(description="oldest first")


def days_back(days: int) -> tuple[int, int]:
    last = to_micros(utcnow()) // DAY_US
    return last - days + 1, last


@router.get("/jobs-daily", response_model=JobsDaily, **role("viewer"))
def jobs_daily(store: StoreDep, days: Days = 30) -> dict[str, Any]:
    """Jobs ended per UTC day, by outcome, with mean and longest run time (seconds)."""
    return {"days": stats.jobs_daily(store, days)}


@router.get("/requests-daily", response_model=RequestsDaily, **role("viewer"))
def requests_daily(store: StoreDep, days: Days = 30) -> dict[str, Any]:
    """Requests received per UTC day (and how many were dry runs)."""
    return {"days": stats.requests_over_time(store, days, DAY_US)}


@router.get("/requests-hourly", response_model=RequestsHourly, **role("viewer"))
def requests_hourly(store: StoreDep, hours: Hours = 48) -> dict[str, Any]:
    """Requests received per UTC hour (and how many were dry runs)."""
    return {"hours": stats.requests_over_time(store, hours, HOUR_US)}


@router.get("/memberships-daily", response_model=MembershipsDaily, **role("viewer", errors=(404,)))
def memberships_daily(
    store: StoreDep,
    days: Days = 30,
    persona: Annotated[
        str | None, Query(max_length=200, description="one persona's key; all when absent")
    ] = None,
) -> dict[str, Any]:
    """Contacts that entered and exited personas per UTC day, from the membership log."""
    pk = None
    if persona is not None:
        with store.read() as conn:
            pk = get_persona(conn, store, persona).pk
    first, last = days_back(days)
    return {"persona": persona, "days": moves_daily(store, first, last, pk)}


def persona_sizes(store: Store) -> list[dict[str, Any]]:
    """Active personas with their member counts, largest first."""
    with store.read() as conn:
        rows = list_personas(conn, store)
    sized = [{"key": p.key, "name": p.name, "category": p.category, "members": n} for p, n in rows]
    return sorted(sized, key=lambda p: (-p["members"], p["key"]))


@router.get("/persona-sizes", response_model=PersonaSizes, **role("viewer"))
def persona_sizes_route(store: StoreDep) -> dict[str, Any]:
    """Active personas and their members now, largest first."""
    return {"personas": persona_sizes(store)}


def stream_health(store: Store, settings: Settings, hours: int = 24) -> dict[str, Any]:
    """The stream's samples of the last `hours`, and whether it runs."""
    from personatag.engines.local.stream.status import health

    return health(store, settings.stream_sample_s, hours)


@router.get("/stream-history", response_model=StreamHistory, **role("viewer"))
def stream_history(store: StoreDep, settings: SettingsDep, hours: Hours = 24) -> dict[str, Any]:
    """The stream's lag (changes, seconds) and changes/s over time, from the
    samples its processor stores, and whether it runs now."""
    return stream_health(store, settings, hours)
