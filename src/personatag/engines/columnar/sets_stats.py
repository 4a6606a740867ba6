"""Persona stats from the persona sets: sizes, overlaps and size over time.

Every figure is a set operation on the bitmaps (cardinalities of and, or and
difference are computed without building the result) or a sum over the
per-day enters and exits the sets keep from the membership log, so an answer
takes milliseconds whatever the personas' sizes.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

from pyroaring import FrozenBitMap

from personatag.domain import utcnow
from personatag.engines.columnar.sets import PersonaSets
from personatag.errors import InputError

MAX_KEYS = 20
MAX_DAYS = 3660
_EPOCH = date(1970, 1, 1)


def _keys(keys: list[str]) -> list[str]:
    if not keys:
        raise InputError("give at least one persona key")
    if len(keys) > MAX_KEYS:
        raise InputError(f"too many personas: at most {MAX_KEYS} at once")
    seen: list[str] = []
    for k in keys:
        if k in seen:
            raise InputError(f"persona {k!r} is given twice")
        seen.append(k)
    return seen


def history(
    sets: PersonaSets, key: str, days: int, *, today: date | None = None
) -> dict[str, list[Any]]:
    """The persona's size at the end of each of the `days` UTC days ending
    `today`, and the contacts that entered and exited each day, oldest first
    (the same figures as memberships.persona_view.size_history: a bulk entry
    counts its contacts, entries dated after `today` count on `today`)."""
    if not 1 <= days <= MAX_DAYS:
        raise InputError(f"invalid days {days}: use 1 to {MAX_DAYS}")
    last = ((today or utcnow().date()) - _EPOCH).days
    first = last - days + 1
    per_day = sets.daily(key)
    size = 0
    window: dict[int, list[int]] = {}
    for d, (entered, exited) in per_day.items():
        if d < first:
            size += entered - exited
        else:
            w = window.setdefault(min(d, last), [0, 0])
            w[0] += entered
            w[1] += exited
    out: dict[str, list[Any]] = {"days": [], "size": [], "entered": [], "exited": []}
    for d in range(first, last + 1):
        entered, exited = window.get(d, (0, 0))
        size += entered - exited
        out["days"].append((_EPOCH + timedelta(days=d)).isoformat())
        out["size"].append(size)
        out["entered"].append(entered)
        out["exited"].append(exited)
    return out


def pair(a: FrozenBitMap, b: FrozenBitMap) -> dict[str, Any]:
    """Both, only the first, only the second, either, and the Jaccard index."""
    both = a.intersection_cardinality(b)
    either = len(a) + len(b) - both
    return {
        "both": both,
        "a_not_b": len(a) - both,
        "b_not_a": len(b) - both,
        "either": either,
        "jaccard": round(both / either, 6) if either else 0.0,
    }


def persona_stats(
    sets: PersonaSets, keys: list[str], *, days: int = 0, today: date | None = None
) -> dict[str, Any]:
    """Sizes and overlaps of `keys` (1 to MAX_KEYS persona keys) from `sets`
    as they are (refresh them first), and with `days` > 0 the size over time.

    Shape: {"personas": [{"key", "name", "size"}], "all", "any", "pairs": [{"a",
    "b", "both", "a_not_b", "b_not_a", "either", "jaccard"}], "matrix" (sizes
    of the pairwise intersections, sizes on the diagonal), "history" ({"days",
    "size": {key: [...]}, "entered": {...}, "exited": {...}} or null),
    "log_seq", "took_ms"}. NotFoundError names an unknown key."""
    started = time.perf_counter()
    keys = _keys(keys)
    infos = [sets.info(k) for k in keys]
    bitmaps = [sets.get(k) for k in keys]
    matrix = [
        [len(a) if i == j else a.intersection_cardinality(b) for j, b in enumerate(bitmaps)]
        for i, a in enumerate(bitmaps)
    ]
    pairs = []
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            pairs.append({"a": keys[i], "b": keys[j], **pair(bitmaps[i], bitmaps[j])})
    if len(bitmaps) == 1:
        every = anyone = len(bitmaps[0])
    elif len(bitmaps) == 2:
        every = matrix[0][1]
        anyone = pairs[0]["either"]
    else:
        every = len(FrozenBitMap.intersection(*bitmaps))
        anyone = len(FrozenBitMap.union(*bitmaps))
    hist: dict[str, Any] | None = None
    if days:
        per = {k: history(sets, k, days, today=today) for k in keys}
        hist = {
            "days": per[keys[0]]["days"],
            "size": {k: per[k]["size"] for k in keys},
            "entered": {k: per[k]["entered"] for k in keys},
            "exited": {k: per[k]["exited"] for k in keys},
        }
    return {
        "personas": [
            {"key": i.key, "name": i.name, "size": len(b)}
            for i, b in zip(infos, bitmaps, strict=True)
        ],
        "all": every,
        "any": anyone,
        "pairs": pairs,
        "matrix": matrix,
        "history": hist,
        "log_seq": sets.last_seq,
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
    }
