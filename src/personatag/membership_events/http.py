"""Signed POSTs to webhook receivers (stdlib only: no HTTP client dependency).

The signature is `sha256=` + hex HMAC-SHA256, keyed with the webhook's secret,
of `{timestamp}.{body}`; docs/events.md shows how a receiver checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request
from typing import Any

from personatag import __version__
from personatag.errors import PersonatagError
from personatag.membership_events.webhooks import check_url

SIGNATURE_HEADER = "X-Personatag-Signature"
TIMESTAMP_HEADER = "X-Personatag-Timestamp"
DELIVERY_HEADER = "X-Personatag-Delivery"


class DeliveryError(PersonatagError):
    """A receiver did not accept a delivery (non-2xx, timeout, refused)."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Personatag-Signature value: HMAC-SHA256 of `{timestamp}.{body}`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect is not a delivery: the receiver must answer 2xx itself.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(url: str, secret: str, body: bytes, delivery_id: str, timeout_s: float) -> str | None:
    """POST a signed body; None when the receiver answered 2xx, else what went wrong."""
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 - check_url allows http(s) only
        check_url(url),
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"personatag/{__version__}",
            SIGNATURE_HEADER: sign(secret, timestamp, body),
            TIMESTAMP_HEADER: str(timestamp),
            DELIVERY_HEADER: delivery_id,
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            status = response.status
            response.read(64 * 1024)
    except urllib.error.HTTPError as exc:
        detail = exc.read(200).decode("utf-8", "replace").strip()
        return f"HTTP {exc.code}" + (f": {detail}" if detail else "")
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return f"no answer within {timeout_s:g} s"
        return f"cannot connect: {getattr(reason, 'strerror', None) or reason}"
    except OSError as exc:  # reset, broken pipe, ...
        return f"connection failed: {exc.strerror or exc}"
    if not 200 <= status < 300:
        return f"HTTP {status}"
    return None
