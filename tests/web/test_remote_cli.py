"""With PERSONATAG_TOKEN set, `status`, `jobs`, `submit` and `preview` talk to a
running `personatag serve` (a real process) and print what they print locally."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from personatag import accounts
from personatag.definitions.personas import add_persona
from personatag.store import open_store
from tests.helpers import add_contacts, population
from tests.web.serving import serving

PASSWORD = "Correct-Horse-42"  # noqa: S105 - a test user's


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "personatag.cli", *args]


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}


@dataclass
class Server:
    url: str
    data_dir: Path
    token: str
    viewer_token: str
    empty_dir: Path

    def run(
        self, *args: str, token: str | None = None, url: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A CLI command talking to the server, over an empty local data dir."""
        env = _base_env() | {
            "PERSONATAG_DATA_DIR": str(self.empty_dir),
            "PERSONATAG_TOKEN": token or self.token,
            "PERSONATAG_SERVER_URL": url or self.url,
        }
        return subprocess.run(
            _cli(*args), env=env, capture_output=True, text=True, timeout=120, check=False
        )

    def local(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The same command run locally on the server's data dir."""
        env = _base_env() | {"PERSONATAG_DATA_DIR": str(self.data_dir)}
        return subprocess.run(
            _cli(*args), env=env, capture_output=True, text=True, timeout=120, check=True
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    data_dir, empty_dir = tmp_path / "server", tmp_path / "empty"
    data_dir.mkdir()
    empty_dir.mkdir()
    env = _base_env() | {
        "PERSONATAG_DATA_DIR": str(data_dir),
        "PERSONATAG_DISPATCHER_POLL_S": "0.1",
    }
    subprocess.run(_cli("init"), env=env, check=True, capture_output=True)
    store = open_store(f"sqlite:///{data_dir / 'store.db'}")
    add_contacts(store, population(40))
    add_persona(store, "emea", name="EMEA", category="region")
    accounts.create_user(store, "ed", PASSWORD, "editor", actor="test")
    token, _ = accounts.create_token(store, "ed", "cli", actor="test")
    accounts.create_user(store, "vi", PASSWORD, "viewer", actor="test")
    viewer_token, _ = accounts.create_token(store, "vi", "cli", actor="test")
    store.dispose()
    with serving(env, tmp_path / "serve.log") as (url, _):
        yield Server(url, data_dir, token, viewer_token, empty_dir)


def _json(r: subprocess.CompletedProcess[str]) -> object:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_commands_go_to_the_server(server: Server, tmp_path: Path) -> None:
    assert _json(server.run("status", "--json")) == {"queued": 0, "running": 0, "recent": []}

    preview = _json(
        server.run("preview", "--expr", 'region = "EMEA"', "--persona", "emea", "--json")
    )
    assert preview == json.loads(
        server.local("preview", "--expr", 'region = "EMEA"', "--persona", "emea", "--json").stdout
    )
    assert isinstance(preview, dict) and preview["count"] == 10

    request = tmp_path / "req.json"
    body = {"version": 1, "request_id": "remote-1", "persona": "emea", "expr": 'region = "EMEA"'}
    request.write_text(json.dumps(body))
    assert _json(server.run("submit", str(request), "--json")) == {
        "request_id": "remote-1",
        "key": "remote-1.json",
    }
    # The embedded dispatcher runs it; --wait reports the summary of the run.
    request.write_text(json.dumps(body | {"request_id": "remote-2"}))
    summary = _json(server.run("submit", str(request), "--wait", "--timeout", "60", "--json"))
    assert isinstance(summary, dict) and summary["status"] == "succeeded"

    csv_file = tmp_path / "batch-1.csv"
    csv_file.write_text("contact_id,persona,action\nc0001,emea,tag\n")
    assert _json(server.run("submit", str(csv_file), "--json")) == {
        "request_id": "batch-1",
        "key": "batch-1.csv",
    }

    listed = _json(server.run("jobs", "list", "--json"))
    assert isinstance(listed, dict)
    assert "remote-2" in {j["request_id"] for j in listed["jobs"]}
    assert listed == json.loads(server.local("jobs", "list", "--json").stdout) or any(
        j["status"] in ("queued", "running") for j in listed["jobs"]
    )
    shown = _json(server.run("jobs", "show", "remote-2", "--json"))
    assert shown == json.loads(server.local("jobs", "show", "remote-2", "--json").stdout)
    assert isinstance(shown, dict) and shown["submitted_by"] == "ed"
    # Submitted by the CLI, through the API with ed's token named "cli".
    assert (shown["source"], shown["token"]) == ("cli", "cli")
    from_cli = _json(server.run("requests", "list", "--source", "cli", "--json"))
    assert isinstance(from_cli, dict) and "remote-2" in {
        r["request_id"] for r in from_cli["requests"]
    }

    text = server.run("status")
    assert text.returncode == 0 and text.stdout.startswith("queued ")

    missing = server.run("jobs", "show", "no-such-request")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")
    # Nothing was created in the local data dir: every command went to the server.
    assert not any(server.empty_dir.iterdir())


@pytest.mark.slow
def test_refused_token_and_role(server: Server) -> None:
    r = server.run("status", "--json", token="pt_not-a-real-token")  # noqa: S106
    assert r.returncode == 1
    assert r.stderr.startswith("error: the server refused the token: ")
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""

    r = server.run("jobs", "cancel", "anything", token=server.viewer_token)
    assert r.returncode == 1
    assert r.stderr.startswith("error: the server refused the token: ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    env = _base_env() | {
        "PERSONATAG_DATA_DIR": str(tmp_path),
        "PERSONATAG_TOKEN": "pt_whatever",
        "PERSONATAG_SERVER_URL": url,
    }
    r = subprocess.run(
        _cli("jobs", "list", "--json"), env=env, capture_output=True, text=True, check=False
    )
    assert r.returncode == 1
    assert r.stderr == (
        f"error: cannot reach the personatag server at {url} (is `personatag serve` running?)\n"
    )


def test_server_url_is_checked(tmp_path: Path) -> None:
    env = _base_env() | {
        "PERSONATAG_DATA_DIR": str(tmp_path),
        "PERSONATAG_TOKEN": "pt_whatever",
        "PERSONATAG_SERVER_URL": "ftp://example.org",
    }
    r = subprocess.run(_cli("status"), env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 1
    assert r.stderr.startswith("error: invalid settings: PERSONATAG_SERVER_URL: ")
