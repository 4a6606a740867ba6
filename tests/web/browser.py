"""What the browser flows share: Debian's Chromium driven by Playwright, a real
`personatag serve` process over a generated store with test users (erin the
editor, vic the viewer, ada the admin), login and screenshots.

A test module makes its own server with `start_server` (extra setup through
CLI commands) or reuses the default `server` fixture by importing it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "correct horse battery staple"  # noqa: S105 - the test users' password

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "personatag.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


@contextmanager
def start_server(
    data: Path,
    contacts: int = 3000,
    setup: Callable[[dict[str, str]], None] | None = None,
    env_extra: dict[str, str] | None = None,
) -> Iterator[str]:
    """A `personatag serve` over a fresh store in `data`: `contacts` generated
    contacts (seed 5), the persona emea-cio, the three test users, then
    `setup(env)` (CLI calls through `cli(env, ...)`). Yields the base URL."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")},
        "PERSONATAG_DATA_DIR": str(data),
        "PERSONATAG_METRICS_PORT": "0",
        "PERSONATAG_FLINK_REST_PORT": str(free_port()),  # no Flink here: shown as down
        **(env_extra or {}),
    }
    cli(env, "init")
    cli(env, "generate", "--contacts", str(contacts), "--seed", "5")
    cli(env, "persona", "add", "emea-cio", "--name", "EMEA CIO", "--category", "role")
    for name, role in (("erin", "editor"), ("vic", "viewer"), ("ada", "admin")):
        cli(env, "user", "add", name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
    if setup is not None:
        setup(env)
    log = (data / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "personatag.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (data / "serve.log").read_text()
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with start_server(tmp_path_factory.mktemp("browser")) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():  # fail, not skip: a skipped browser test proves nothing
        pytest.fail("Debian's chromium is missing: `apt-get install chromium` (.ci/run does)")

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


def shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def login(browser: object, url: str, user: str) -> object:
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(f"{url}/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: not u.endswith("/login"))
    page.wait_for_load_state()
    return page
