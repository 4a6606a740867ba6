"""The login page and the home page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from personatag.web.auth import PUBLIC
from personatag.web.pages.common import declare, page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/login", **declare(PUBLIC))
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", None, title="Log in")


@router.get("/", **declare("viewer"))
def home(request: Request) -> Response:
    page_user(request, "viewer")
    return RedirectResponse("/personas", status_code=303)
