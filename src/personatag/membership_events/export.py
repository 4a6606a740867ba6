"""The membership log as JSON lines, for other systems to read and resume.

One line per contact change, in seq order:

    {"seq": 41, "at": "2026-06-30T12:00:00.123456Z", "persona": "emea",
     "contact_id": "c0004", "change": "enter", "source": "adhoc",
     "criterion": "emea-readers@2", "request_id": "req-7"}

`since` is exclusive and `until` inclusive; `limit` counts log *entries*, not
lines: a bulk entry (one seq, many contacts) is never split, so resuming with
`since` = the last seq seen neither skips nor repeats a change.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from personatag.errors import InputError
from personatag.membership_events.reader import (
    ENTRY_CHUNK,
    entry_events,
    persona_pks,
    read_entries,
    settled_seq,
)
from personatag.store import Store


@dataclass
class ExportProgress:
    """What an export got through, filled in as it streams."""

    entries: int = 0
    events: int = 0
    last_seq: int | None = None  # resume with since=last_seq
    settled_seq: int = 0


def export_events(
    store: Store,
    *,
    persona: str | None = None,
    since: int = 0,
    until: int | None = None,
    limit: int | None = None,
    progress: ExportProgress | None = None,
    settle_wait_s: float = 10.0,
) -> Iterator[dict[str, Any]]:
    """The events of log entries with since < seq <= until, at most `limit` entries.

    Checks its arguments (InputError, NotFoundError for an unknown persona)
    before returning; the events are then read in chunks as they are consumed.
    Entries not yet settled (see membership_events.reader) are left for a later export.
    """
    if since < 0:
        raise InputError(f"invalid since {since}: use a log seq (0: from the start)")
    if until is not None and until < 0:
        raise InputError(f"invalid until {until}: use a log seq")
    if limit is not None and limit < 1:
        raise InputError(f"invalid limit {limit}: use at least 1 (log entries)")
    pks = None if persona is None else list(persona_pks(store, [persona]).values())
    end = settled_seq(store, wait_s=settle_wait_s)
    if until is not None:
        end = min(end, until)
    prog = progress if progress is not None else ExportProgress()
    prog.settled_seq = end
    return _events(store, since, end, pks, limit, prog)


def _events(
    store: Store,
    after: int,
    end: int,
    personas: list[int] | None,
    limit: int | None,
    prog: ExportProgress,
) -> Iterator[dict[str, Any]]:
    left = limit
    while left is None or left > 0:
        chunk = ENTRY_CHUNK if left is None else min(ENTRY_CHUNK, left)
        entries = read_entries(store, after=after, until=end, personas=personas, limit=chunk)
        if not entries:
            return
        for entry in entries:
            for ev in entry_events(store, entry):
                prog.events += 1
                yield ev
            prog.entries += 1
            prog.last_seq = entry.seq
        after = entries[-1].seq
        if left is not None:
            left -= len(entries)


def export_lines(store: Store, **kwargs: Any) -> Iterator[str]:
    """`export_events` as JSON lines (each ending in a newline); checks its
    arguments before returning, like `export_events`."""
    events = export_events(store, **kwargs)
    return (json.dumps(ev, ensure_ascii=False) + "\n" for ev in events)
