"""Signed POSTs to webhook receivers, through one pooled httpx client.

The signature is `sha256=` + hex HMAC-SHA256, keyed with the webhook's secret,
of `{timestamp}.{body}`; docs/events.md shows how a receiver checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time

import httpx

from personatag import __version__
from personatag.errors import PersonatagError
from personatag.membership_events.webhooks import check_url

SIGNATURE_HEADER = "X-Personatag-Signature"
TIMESTAMP_HEADER = "X-Personatag-Timestamp"
DELIVERY_HEADER = "X-Personatag-Delivery"

# What is read of an answer: its body says nothing we use, and a receiver must
# not make us hold (or inflate) an unbounded one.
ACCEPTED_READ_MAX = 64 * 1024
ERROR_DETAIL_MAX = 200


class DeliveryError(PersonatagError):
    """A receiver did not accept a delivery (non-2xx, timeout, refused)."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Personatag-Signature value: HMAC-SHA256 of `{timestamp}.{body}`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


_client_lock = threading.Lock()
_shared: httpx.Client | None = None


def _client() -> httpx.Client:
    """The process's client: made on first use, its connections kept between deliveries."""
    global _shared
    with _client_lock:
        if _shared is None:
            # A redirect is not a delivery: the receiver must answer 2xx itself.
            _shared = httpx.Client(follow_redirects=False)
        return _shared


def _read(response: httpx.Response, limit: int) -> bytes:
    """Up to `limit` bytes of the body as sent (not decompressed)."""
    if response.is_stream_consumed:  # read already (a mock transport's bytes)
        return response.content[:limit]
    data = b""
    for chunk in response.iter_raw():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit]


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for a failed call (`Connection refused`), else the error's."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def post(
    url: str,
    secret: str,
    body: bytes,
    delivery_id: str,
    timeout_s: float,
    *,
    client: httpx.Client | None = None,
) -> str | None:
    """POST a signed body; None when the receiver answered 2xx, else what went wrong.

    `timeout_s` bounds the connect and each read and write; redirects are not
    followed (a 3xx is a failure).
    """
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"personatag/{__version__}",
        # Bodies are read raw and capped: ask for them uncompressed.
        "Accept-Encoding": "identity",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TIMESTAMP_HEADER: str(timestamp),
        DELIVERY_HEADER: delivery_id,
    }
    try:
        with (client or _client()).stream(
            "POST",
            check_url(url),
            content=body,
            headers=headers,
            timeout=timeout_s,
            follow_redirects=False,
        ) as response:
            status = response.status_code
            if 200 <= status < 300:
                _read(response, ACCEPTED_READ_MAX)
                return None
            detail = _read(response, ERROR_DETAIL_MAX).decode("utf-8", "replace").strip()
    except httpx.TimeoutException:
        return f"no answer within {timeout_s:g} s"
    except httpx.ConnectError as exc:
        return f"cannot connect: {_os_reason(exc)}"
    except (httpx.TransportError, OSError) as exc:  # reset, broken pipe, ...
        return f"connection failed: {_os_reason(exc)}"
    return f"HTTP {status}" + (f": {detail}" if detail else "")
