"""The workbench's pages: server-rendered shells over the same modules the API
and the CLI call; the interactive parts (validate as you type, preview,
submit, live request status, pins) call the JSON API from static/app.js.

A page declares its role like an API route (`x-role`, read by the route-walk
test). Without a session it answers 401 with the login form; below its role,
403 with the reason.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from personatag import accounts, audit_log
from personatag.errors import PersonatagError
from personatag.web.auth import PUBLIC, Principal, RoleMount, principal_of
from personatag.web.errors import ApiError

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


class _Denied(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def _declare(name: str) -> dict[str, Any]:
    return {"openapi_extra": {"x-role": name}, "response_class": HTMLResponse}


def _ctx(request: Request) -> Any:
    return request.app.state.ctx


def _render(
    request: Request,
    name: str,
    principal: Principal | None,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    values.setdefault("title", name.split(".")[0].capitalize())
    return templates.TemplateResponse(
        request,
        name,
        {
            "user": principal.user if principal else None,
            "csrf": principal.csrf_token if principal else "",
            "page": name.split(".")[0],
            **values,
        },
        status_code=status_code,
    )


def _page_user(request: Request, needed: str) -> Principal:
    try:
        principal = principal_of(request, _ctx(request).store)
    except ApiError as exc:
        message = exc.message if exc.status == 401 else None
        raise _Denied(_render(request, "login.html", None, 401, message=message)) from None
    if principal is None:
        raise _Denied(_render(request, "login.html", None, 401))
    if not accounts.role_at_least(principal.user.role, needed):
        message = f"This page needs the {needed} role; you are {principal.user.role}."
        raise _Denied(_render(request, "forbidden.html", principal, 403, message=message))
    return principal


def install(app: FastAPI) -> None:
    """Add the pages and their static files to `app`."""

    @app.exception_handler(_Denied)
    async def _denied(request: Request, exc: _Denied) -> Response:
        return exc.response

    app.include_router(router)
    app.router.routes.append(
        RoleMount("/static", StaticFiles(directory=str(HERE / "static")), role=PUBLIC)
    )


@router.get("/login", **_declare(PUBLIC))
def login_page(request: Request) -> HTMLResponse:
    return _render(request, "login.html", None, title="Log in")


@router.get("/", **_declare("viewer"))
def home(request: Request) -> Response:
    _page_user(request, "viewer")
    return RedirectResponse("/personas", status_code=303)


@router.get("/personas", **_declare("viewer"))
def personas_page(request: Request) -> HTMLResponse:
    from personatag.definitions.criteria import list_criteria
    from personatag.definitions.personas import list_personas

    who = _page_user(request, "viewer")
    store = _ctx(request).store
    with store.read() as conn:
        personas = list_personas(conn, store)
        criteria = list_criteria(conn, store)
    feeding: dict[str, list[Any]] = {}
    for c in criteria:
        feeding.setdefault(c.persona_key, []).append(c)
    items = [
        {
            "key": p.key,
            "name": p.name,
            "category": p.category,
            "members": n,
            "criteria": [
                {"name": c.name, "version": c.version, "mode": c.mode.value, "expr": c.expr}
                for c in feeding.get(p.key, [])
            ],
        }
        for p, n in personas
    ]
    categories = [
        (cat, list(group)) for cat, group in itertools.groupby(items, key=lambda i: i["category"])
    ]
    return _render(request, "personas.html", who, title="Personas", categories=categories)


@router.get("/criteria/new", **_declare("viewer"))
def builder_page(request: Request, expr: str = "") -> HTMLResponse:
    from personatag.definitions.personas import list_personas

    who = _page_user(request, "viewer")
    store = _ctx(request).store
    with store.read() as conn:
        personas = [p for p, _ in list_personas(conn, store)]
        catalog = store.catalog(conn)

    def typed(fields: Any) -> list[dict[str, str]]:
        return [{"name": n, "type": t.value} for n, t in sorted(fields.items())]

    return _render(
        request,
        "builder.html",
        who,
        title="Criterion builder",
        personas=personas,
        fields=typed(catalog.contact_fields),
        publication_fields=typed(catalog.publication_fields),
        expr=expr,
    )


@router.get("/requests", **_declare("viewer"))
def requests_page(request: Request) -> HTMLResponse:
    who = _page_user(request, "viewer")
    return _render(request, "requests.html", who, title="Requests")


@router.get("/jobs/{job_id}", **_declare("viewer"))
def job_page(request: Request, job_id: str) -> HTMLResponse:
    from personatag.jobs.repository import get_job

    who = _page_user(request, "viewer")
    try:
        job = get_job(_ctx(request).store, job_id).as_json()
    except PersonatagError as exc:
        return _render(request, "forbidden.html", who, 404, title="Not found", message=str(exc))
    from personatag.jobs.progress import describe

    progress_text = describe(job["progress"], job["status"])
    return _render(
        request, "job.html", who, title=f"Job {job['id']}", job=job, progress_text=progress_text
    )


@router.get("/contacts", **_declare("viewer"))
def contact_page(request: Request, id: str | None = None, ranker: str = "ours") -> HTMLResponse:
    from personatag.contacts import show_contact
    from personatag.definitions.personas import list_personas

    who = _page_user(request, "viewer")
    store = _ctx(request).store
    contact, error = None, None
    feed, feed_error = None, None
    if id:
        try:
            contact = show_contact(store, id)
        except PersonatagError as exc:
            error = str(exc)
    from personatag.recommend.baselines import BASELINE_KEYS, RANKER_KEYS

    chosen = ranker if ranker in RANKER_KEYS else "ours"
    if contact is not None:
        from personatag.recommend.service import feed_for

        try:
            feed = feed_for(store, id or "", 10, None, _ctx(request).settings, ranker=chosen)
        except PersonatagError as exc:
            feed_error = str(exc)
    with store.read() as conn:
        personas = [p for p, _ in list_personas(conn, store)]
    return _render(
        request,
        "contact.html",
        who,
        title="Contacts",
        contact=contact,
        contact_id=id,
        error=error,
        personas=personas,
        feed=feed,
        feed_error=feed_error,
        rankers=[("ours", "ours (served)")]
        + [(key, name) for key, (name, _) in BASELINE_KEYS.items()],
        ranker=chosen,
    )


@router.get("/feed-rules", **_declare("viewer"))
def feed_rules_page(request: Request, persona: str | None = None) -> HTMLResponse:
    from personatag.definitions.personas import list_personas
    from personatag.recommend.rules import list_rules

    who = _page_user(request, "viewer")
    store = _ctx(request).store
    with store.read() as conn:
        personas = [p for p, _ in list_personas(conn, store)]
    chosen = persona or (personas[0].key if personas else None)
    rules = [r.to_json() for r in list_rules(store, chosen)] if chosen else []
    return _render(
        request, "feed_rules.html", who, title="Feed rules", personas=personas, chosen=chosen,
        rules=rules,
    )  # fmt: skip


@router.get("/feed-evaluations", **_declare("viewer"))
def feed_evaluations_page(request: Request, id: str | None = None) -> HTMLResponse:
    from personatag.recommend.runs import list_runs

    who = _page_user(request, "viewer")
    runs = list_runs(_ctx(request).settings)
    chosen = next((r for r in runs if r["id"] == id), None) if id else next(iter(runs), None)
    error = f"unknown feed evaluation {id!r}" if id and chosen is None else None
    return _render(
        request, "feed_evaluations.html", who, title="Feed evaluations", runs=runs,
        chosen=chosen, error=error,
        running=any(r["status"] == "running" for r in runs),
    )  # fmt: skip


@router.get("/audit", **_declare("admin"))
def audit_page(
    request: Request, actor: str | None = None, action: str | None = None
) -> HTMLResponse:
    who = _page_user(request, "admin")
    events = audit_log.list_events(
        _ctx(request).store, actor=actor or None, action=action or None, limit=200
    )
    return _render(
        request, "audit.html", who, title="Audit log", events=events, actor=actor, action=action
    )


@router.get("/monitoring", **_declare("viewer"))
def monitoring_page(request: Request) -> HTMLResponse:
    from personatag.domain import JobStatus
    from personatag.engines.flink.runtime import cluster
    from personatag.jobs.repository import list_jobs

    who = _page_user(request, "viewer")
    ctx = _ctx(request)
    store = ctx.store
    recent = [j.as_json() for j in list_jobs(store, limit=20)]
    ended = [j for j in recent if JobStatus(j["status"]).ended]
    failed = sum(1 for j in ended if j["status"] in (JobStatus.FAILED, JobStatus.CANCELLED))
    status = {
        "queued": len(list_jobs(store, status=JobStatus.QUEUED, limit=1000)),
        "running": len(list_jobs(store, status=JobStatus.RUNNING, limit=1000)),
        "recent": recent,
        "failure_rate": failed / len(ended) if ended else 0.0,
    }
    try:
        info = cluster.status(ctx.settings)
    except PersonatagError as exc:
        info = {"reachable": False, "url": "-", "error": str(exc)}
    flink = {
        "reachable": info.get("reachable"),
        "url": info.get("url"),
        "error": info.get("error"),
        "task_managers": len(info.get("task_managers") or []),
        "slots_total": info.get("slots_total"),
        "slots_available": info.get("slots_available"),
        "jobs_running": (info.get("jobs") or {}).get("running", 0),
    }
    from personatag.engines.local.stream.status import status as stream_status
    from personatag.metrics import default_metrics

    stream = stream_status(store)
    registry = default_metrics().registry

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels or None) or 0.0

    stream["rates"] = {
        "changes": sample("personatag_stream_changes_per_second"),
        "evaluations": sample("personatag_stream_evaluations_per_second"),
        "entered": sample("personatag_stream_memberships_changed_total", change="enter"),
        "exited": sample("personatag_stream_memberships_changed_total", change="exit"),
        "repairs": sample("personatag_reconciliation_repairs_total"),
    }
    return _render(
        request,
        "monitoring.html",
        who,
        title="Monitoring",
        status=status,
        flink=flink,
        stream=stream,
        store_kind=store.dialect,
    )


@router.get("/admin/users", **_declare("admin"))
def users_page(request: Request) -> HTMLResponse:
    who = _page_user(request, "admin")
    store = _ctx(request).store
    return _render(
        request,
        "users.html",
        who,
        title="Users",
        users=accounts.list_users(store),
        tokens=accounts.list_tokens(store),
    )
