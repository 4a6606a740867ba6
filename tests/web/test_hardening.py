"""Browser and login hardening (issue 17 item 12): security headers on every
answer, a CSP the pages keep to, proxy headers believed only from configured
proxies, login limits per account, per address and overall, no secret in logs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from personatag import accounts
from personatag.audit_log import list_events
from personatag.config import Settings
from personatag.store import Store
from personatag.web import create_app
from personatag.web.auth import LoginLimiter
from tests.web.conftest import API, PASSWORD, Api
from tests.web.serving import serving

TEMPLATES = Path(__file__).resolve().parents[2] / "src/personatag/web/templates"
WRONG = {"password": "not-the-password-1"}


def _assert_browser_headers(r: httpx.Response, what: str) -> None:
    csp = r.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp, what
    assert "style-src 'self'" in csp, what
    assert "frame-ancestors 'none'" in csp, what
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, what
    assert r.headers.get("x-frame-options") == "DENY", what
    assert r.headers.get("x-content-type-options") == "nosniff", what
    assert r.headers.get("referrer-policy") == "no-referrer", what


def test_every_answer_carries_the_browser_security_headers(api: Api) -> None:
    """Issue 17 item 12: no Content-Security-Policy, X-Frame-Options, nosniff or
    Referrer-Policy on any page, API answer, static file or error."""
    c = api.client
    answers = {
        "login page": c.get("/login"),
        "page without a session (401)": c.get("/personas"),
        "static js": c.get("/static/js/core.js"),
        "static css": c.get("/static/app.css"),
        "api": c.get(f"{API}/me", headers=api.headers("viewer")),
        "api 401": c.get(f"{API}/me"),
        "api 404": c.get(f"{API}/nowhere", headers=api.headers("viewer")),
        "api 405": c.delete(f"{API}/personas", headers=api.headers("admin")),
        "api 422": c.get(f"{API}/jobs?limit=0", headers=api.headers("viewer")),
        "healthz": c.get("/healthz"),
        "openapi": c.get(f"{API}/openapi.json"),
    }
    c.post(f"{API}/login", json={"username": "viewer", "password": PASSWORD})
    answers["page"] = c.get("/personas")
    answers["dashboard"] = c.get("/", follow_redirects=False)
    for what, r in answers.items():
        _assert_browser_headers(r, what)


def test_the_flink_dashboard_gets_the_headers_with_inline_styles_allowed(api: Api) -> None:
    """Issue 17 item 12: the proxied Flink dashboard is framed by nobody either; its
    framework injects styles at run time, so only style-src allows inline."""
    for r in (
        api.client.get("/flink/overview", headers=api.headers("viewer")),
        api.client.get("/flink/overview"),  # 401
    ):
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self';" in csp
        assert "style-src 'self' 'unsafe-inline'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"


def test_templates_have_no_inline_script_style_or_handler() -> None:
    """Issue 17 item 12: inline event handlers (`onchange=`) in the templates would
    break under a strict CSP; pages load only /static JS and CSS."""
    bad = re.compile(
        r"<script(?![^>]*\bsrc=)[^>]*>|<style\b|\sstyle=|\son[a-z]+=|javascript:", re.I
    )
    found = [
        f"{p.name}: {m.group(0)}"
        for p in sorted(TEMPLATES.glob("*.html"))
        for m in bad.finditer(p.read_text())
    ]
    assert not found


def _serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    env |= {
        "PERSONATAG_DATA_DIR": str(tmp_path / "data"),
        "PERSONATAG_METRICS_PORT": "0",
        "PERSONATAG_FLINK_REST_PORT": "1",
        **extra,
    }
    return env


def _prepare(tmp_path: Path) -> str:
    settings = Settings(data_dir=tmp_path / "data")
    from personatag.store import open_store

    store = open_store(settings.resolved_store_url, create=True)
    try:
        accounts.create_user(store, "erin", PASSWORD, "editor", actor="test")
        token, _ = accounts.create_token(store, "erin", "t", actor="test")
    finally:
        store.dispose()
    return token


def test_forwarded_for_from_localhost_does_not_dodge_the_login_limit(tmp_path: Path) -> None:
    """Issue 17 item 12: uvicorn believed X-Forwarded-For from 127.0.0.1, so
    rotating it bypassed the login limiter and the spoofed address went into the
    audit log. With no trusted proxy configured the header is ignored."""
    _prepare(tmp_path)
    with serving(_serve_env(tmp_path), tmp_path / "serve.log") as (url, _):
        codes = []
        for i in range(8):
            r = httpx.post(
                f"{url}{API}/login",
                json={"username": "erin", **WRONG},
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
            )
            codes.append(r.status_code)
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}, codes
    from personatag.store import open_store

    store = open_store(Settings(data_dir=tmp_path / "data").resolved_store_url)
    try:
        clients = {e["detail"]["client"] for e in list_events(store, action="login.failed")}
    finally:
        store.dispose()
    assert clients == {"127.0.0.1"}


def test_a_configured_proxy_is_believed(tmp_path: Path) -> None:
    """Issue 17 item 12: proxy headers are trusted from PERSONATAG_TRUSTED_PROXIES
    (and only from there): the forwarded address is the client's, in the limiter
    and in the audit log, and X-Forwarded-Proto gives the cookie Secure."""
    _prepare(tmp_path)
    env = _serve_env(tmp_path, PERSONATAG_TRUSTED_PROXIES="127.0.0.0/8")
    with serving(env, tmp_path / "serve.log") as (url, _):
        r = httpx.post(
            f"{url}{API}/login",
            json={"username": "erin", **WRONG},
            headers={"X-Forwarded-For": "198.51.100.7"},
        )
        assert r.status_code == 401
        r = httpx.post(
            f"{url}{API}/login",
            json={"username": "erin", "password": PASSWORD},
            headers={"X-Forwarded-For": "198.51.100.8", "X-Forwarded-Proto": "https"},
        )
        assert r.status_code == 200
        assert "secure" in r.headers["set-cookie"].lower()
    from personatag.store import open_store

    store = open_store(Settings(data_dir=tmp_path / "data").resolved_store_url)
    try:
        failed = list_events(store, action="login.failed")
        ok = list_events(store, action="login")
    finally:
        store.dispose()
    assert [e["detail"]["client"] for e in failed] == ["198.51.100.7"]
    assert [e["detail"]["client"] for e in ok] == ["198.51.100.8"]


def test_a_query_token_never_reaches_the_access_log(tmp_path: Path) -> None:
    """Issue 17 item 12: a token passed as `?token=` landed in the access log
    (tokens go in the Authorization header; a query one is redacted from logs)."""
    token = _prepare(tmp_path)
    log = tmp_path / "serve.log"
    with serving(_serve_env(tmp_path), log) as (url, _):
        httpx.get(f"{url}{API}/me?token={token}")
        httpx.get(f"{url}{API}/me?access_token={token}&x=1")
        httpx.get(f"{url}/no/such/{token}")
    text = log.read_text()
    assert "GET /api/v1/me?token=[redacted]" in text  # the access log is on, redacted
    assert token not in text
    assert token[3:20] not in text


def test_redact_hides_secrets_in_urls() -> None:
    """Issue 17 item 12: what the log redaction covers."""
    from personatag.logs import redact

    assert redact("/x?a=1&token=abc&b=2") == "/x?a=1&token=[redacted]&b=2"
    assert redact("/x?Access_Token=abc") == "/x?Access_Token=[redacted]"
    assert redact("/x?password=p&secret=s") == "/x?password=[redacted]&secret=[redacted]"
    assert redact("https://bob:pw@example.com/h") == "https://[redacted]@example.com/h"
    assert redact("sent pt_AbCdEfGhIjKlMnOpQrSt") == "sent [redacted]"
    assert redact("/x?tokens_left=3") == "/x?tokens_left=3"  # not a secret name
    assert redact("/api/v1/jobs?status=failed") == "/api/v1/jobs?status=failed"


def test_login_limits_per_account_and_per_address(settings: Settings, store: Store) -> None:
    """Issue 17 item 12: only (user name, address) pairs were limited, so one user
    could be guessed from many addresses and many users sprayed from one."""
    settings = settings.model_copy(
        update={"login_max_failures_account": 3, "login_max_failures_address": 4}
    )
    accounts.create_user(store, "erin", PASSWORD, "editor", actor="test")
    accounts.create_user(store, "ada", PASSWORD, "editor", actor="test")
    app = create_app(settings, store)
    # One account from rotating addresses: the per-account limit stops it.
    codes = []
    for i in range(5):
        with TestClient(app, client=(f"192.0.2.{i}", 1)) as c:
            codes.append(c.post(f"{API}/login", json={"username": "erin", **WRONG}).status_code)
    assert codes == [401, 401, 401, 429, 429]
    # Many user names from one address: the per-address limit stops it.
    with TestClient(app, client=("192.0.2.200", 1)) as c:
        codes = [
            c.post(f"{API}/login", json={"username": f"u{i}", **WRONG}).status_code
            for i in range(6)
        ]
        assert codes == [401] * 4 + [429] * 2
        r = c.post(f"{API}/login", json={"username": "ada", "password": PASSWORD})
        assert r.status_code == 429 and "from this address" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1


def test_login_limit_over_all(settings: Settings, store: Store) -> None:
    """Issue 17 item 12: password spraying from many addresses over many user names
    (124 attempts in 10 s) met no limit at all."""
    settings = settings.model_copy(update={"login_max_failures_global": 6})
    app = create_app(settings, store)
    codes = []
    for i in range(8):
        with TestClient(app, client=(f"198.18.0.{i}", 1)) as c:
            codes.append(c.post(f"{API}/login", json={"username": f"n{i}", **WRONG}).status_code)
    assert codes == [401] * 6 + [429] * 2


def test_a_success_does_not_reset_the_address_or_overall_counts() -> None:
    """Issue 17 item 12: an attacker's own valid login must not clear the counts
    that hold back their spraying."""
    limiter = LoginLimiter(limit=5, window_s=60, per_account=50, per_address=3, overall=50)
    for name in ("a", "b"):
        limiter.failed((name, "10.0.0.1"))
    limiter.succeeded(("me", "10.0.0.1"))
    limiter.failed(("c", "10.0.0.1"))
    assert limiter.blocked(("d", "10.0.0.1")) is not None
    assert limiter.blocked(("d", "10.0.0.2")) is None
