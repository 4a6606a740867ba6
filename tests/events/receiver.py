"""A real webhook receiver on 127.0.0.1: checks every signature the way
docs/events.md tells receivers to, and answers as a test scripts it."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify(secret: str, headers: Any, body: bytes, *, tolerance_s: int = 300) -> bool:
    """What a receiver does: recompute the HMAC of "{timestamp}.{body}" and compare."""
    timestamp = headers.get("X-Personatag-Timestamp", "")
    signature = headers.get("X-Personatag-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(signature, "sha256=" + expected.hexdigest())


@dataclass
class Delivery:
    delivery_id: str
    body: dict[str, Any]
    raw: bytes
    content_type: str


@dataclass
class Receiver:
    url: str = ""
    secret: str = ""
    fail: int = 0  # answer the next `fail` POSTs with `status`
    status: int = 500
    always_fail: bool = False
    accepted: list[Delivery] = field(default_factory=list)
    refused: list[Delivery] = field(default_factory=list)
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [ev for d in self.accepted for ev in d.body["events"]]


def _handler(rx: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if not verify(rx.secret, self.headers, raw):
                with rx.lock:
                    rx.bad_signatures += 1
                self._answer(401)
                return
            d = Delivery(
                self.headers["X-Personatag-Delivery"],
                json.loads(raw),
                raw,
                self.headers["Content-Type"],
            )
            with rx.lock:
                failing = rx.always_fail or rx.fail > 0
                if failing:
                    rx.fail = max(0, rx.fail - 1)
                    rx.refused.append(d)
                else:
                    rx.accepted.append(d)
            self._answer(rx.status if failing else 204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def receiver() -> Iterator[Receiver]:
    rx = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rx))
    rx.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rx
    finally:
        server.shutdown()
        server.server_close()
