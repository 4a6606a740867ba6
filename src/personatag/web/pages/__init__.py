"""The workbench's pages: server-rendered shells over the same modules the API
and the CLI call; the interactive parts (validate as you type, preview,
submit, live status, charts, edits) call the JSON API from static/js/.

One module per area; each has its own router, collected here.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from personatag.web.auth import PUBLIC, RoleMount
from personatag.web.pages import (
    admin,
    builder,
    contacts,
    criteria,
    feed,
    home,
    monitoring,
    personas,
    requests,
)
from personatag.web.pages.common import HERE, Denied

# builder before criteria: /criteria/new is the builder, /criteria/{name} a criterion.
ROUTERS = (home, personas, builder, criteria, requests, contacts, feed, admin, monitoring)


def install(app: FastAPI) -> None:
    """Add the pages and their static files to `app`."""

    @app.exception_handler(Denied)
    async def _denied(request: Request, exc: Denied) -> Response:
        return exc.response

    for module in ROUTERS:
        app.include_router(module.router)
    app.router.routes.append(
        RoleMount("/static", StaticFiles(directory=str(HERE / "static")), role=PUBLIC)
    )
