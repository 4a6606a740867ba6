"""Who submitted a request, and how: recorded with the request, shown and
filtered on by the API and the workbench.

`via` names the way in: `workbench` (a browser session), `api` (an API
token), `cli` (`personatag tag|untag|submit`) or `file` (a file put into the
requests bucket directly, with no submission record). A file submitted
through the API or `personatag submit` gets a submission record under its
bucket key; the dispatcher reads it when it records the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from personatag.domain import utcnow
from personatag.store import Store

WORKBENCH, API, CLI, FILE = "workbench", "api", "cli", "file"
VIA = (WORKBENCH, API, CLI, FILE)


@dataclass(frozen=True)
class Submitter:
    """Who submitted a request (a user name, or None when unknown), how
    (one of VIA) and, through the API with a token, the token's name."""

    who: str | None
    via: str
    token: str | None = None


#: A file in the requests bucket that nobody submitted through personatag.
DROPPED = Submitter(None, FILE)


def record_submission(store: Store, key: str, request_id: str, submitter: Submitter) -> None:
    """Record who submitted the file stored under `key` (before it is stored,
    so a dispatcher never sees it without its record). A record left by a
    file that never got stored under the same key is replaced."""
    t = store.tables.request_submissions
    with store.write() as conn:
        conn.execute(t.delete().where(t.c.key == key))
        conn.execute(
            t.insert().values(
                key=key,
                request_id=request_id,
                submitted_by=submitter.who,
                submitted_via=submitter.via,
                submitted_token=submitter.token,
                submitted_at=utcnow(),
            )
        )


def submission_of(store: Store, key: str, *, named: str | None) -> Submitter:
    """Who submitted the file under `key`; a file without a record was dropped
    into the bucket (`file`), by the `submitted_by` it names (`named`), if any."""
    t = store.tables.request_submissions
    with store.read() as conn:
        row = conn.execute(
            select(t.c.submitted_by, t.c.submitted_via, t.c.submitted_token).where(t.c.key == key)
        ).first()
    if row is None:
        return Submitter(named, FILE)
    who = row.submitted_by
    if row.submitted_via == CLI and named:
        # A local `personatag submit` knows only the account it runs under;
        # the file may name its author. (The API names the caller itself.)
        who = named
    return Submitter(who or named, row.submitted_via, row.submitted_token)
