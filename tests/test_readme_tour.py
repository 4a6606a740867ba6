"""The README's tour runs as written: its shell block, copied whole, against the
store `make demo` leaves (the demo serving meanwhile, as the README says), and
its sample contact holds personas to explain. A second demo on the same store
prints the same admin password."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from personatag import demo
from personatag.accounts import authenticate
from personatag.contacts import show_contact
from personatag.definitions.personas import list_personas
from personatag.store import open_store

ROOT = Path(__file__).resolve().parent.parent
TOUR = re.compile(r"^## A tour\n.*?^```sh\n(.*?)^```", re.S | re.M)
# What the tour defines and does to the sample contact.
TOUR_PERSONA = "emea-healthcare-cio"


def tour() -> str:
    found = TOUR.search((ROOT / "README.md").read_text())
    assert found, "README.md has no ```sh block under '## A tour'"
    return found.group(1)


def commands(block: str) -> list[str]:
    """The block's command lines, without comments."""
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_the_tour_is_copy_paste_ready() -> None:
    found = commands(tour())
    assert len(found) >= 8, found
    for line in found:
        assert "..." not in line and "<" not in line, f"a placeholder in the tour: {line}"
        assert not line.endswith("\\"), f"a continued line in the tour: {line}"
    assert found[0] == "export PATH=$PWD/.venv/bin:$PATH", found[0]
    shown = [line for line in found if line.startswith("personatag contact show")]
    assert shown and all(line.split()[-1] == demo.SAMPLE_CONTACT for line in shown), shown


class Demo:
    """`python -m personatag.demo` (what `make demo` runs) in `cwd`, until it serves."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "personatag.demo"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 600
        while not any("workbench at http" in line for line in self.lines):
            assert self.proc.poll() is None, "the demo ended:\n" + self.output
            assert time.monotonic() < deadline, "the demo did not serve:\n" + self.output
            time.sleep(0.2)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def login_line(self) -> str:
        found = [line for line in self.lines if line.startswith("the workbench: log in")]
        assert len(found) == 1, self.output
        return found[0]

    def password(self) -> str:
        found = re.search(r"with password (\S+) \(", self.login_line())
        assert found, self.login_line()
        return found.group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)


@pytest.mark.slow
def test_the_tour_runs_on_a_fresh_demo(tmp_path: Path) -> None:
    # `personatag` on the tour's PATH ($PWD/.venv/bin): this interpreter's CLI.
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    shim = bin_dir / "personatag"
    shim.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c "from personatag.cli import main; main()" "$@"\n'
    )
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONATAG_")}
    env["PERSONATAG_PORT"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )

    first = Demo(tmp_path, env)
    try:
        assert f"a sample contact, {demo.SAMPLE_CONTACT}:" in first.output
        ran = subprocess.run(
            ["bash", "-e", "-c", tour()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        first.stop()
    assert ran.returncode == 0, f"the tour failed:\n{ran.stdout}\n{ran.stderr}"
    assert f"{demo.SAMPLE_CONTACT} pinned out of {TOUR_PERSONA}" in ran.stdout, ran.stdout

    store = open_store(f"sqlite:///{tmp_path / 'personatag-data' / 'store.db'}")
    try:
        held = {p["persona"]: p for p in show_contact(store, demo.SAMPLE_CONTACT)["personas"]}
        # the demo's personas with their why; the tour's own one pinned away
        assert {"cio", "emea", "emea-energy-cio"} <= held.keys(), held
        assert all(p["sources"] for p in held.values()), held
        assert TOUR_PERSONA not in held, held
        with store.read() as conn:
            sizes = {p.key: n for p, n in list_personas(conn, store)}
        assert sizes[TOUR_PERSONA] > 1, sizes
        password = first.password()
        assert authenticate(store, "admin", password) is not None
    finally:
        store.dispose()

    second = Demo(tmp_path, env)
    second.stop()
    assert second.password() == password, second.login_line()
    assert "the same as before" in second.login_line()
