"""A real `personatag serve` process for tests: started, its URL read from what it
prints, stopped with SIGTERM (which must end it cleanly, exit code 0)."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def serving(env: dict[str, str], log_path: Path, *args: str) -> Iterator[tuple[str, list[str]]]:
    """(base URL, lines printed before it) of `personatag serve --port 0 ARGS`."""
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "personatag.cli", "serve", "--port", "0", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    out = proc.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in out], daemon=True).start()
    printed: list[str] = []
    try:
        url = None
        while url is None:
            line = lines.get(timeout=30)
            printed.append(line)
            if m := re.match(r"workbench at (http://\S+)/ ", line):
                url = m.group(1)
        yield url, printed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            log.close()
    assert code == 0, log_path.read_text()[-2000:]
