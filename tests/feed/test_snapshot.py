"""The snapshot's read matrix, streamed in small parts: the same pairs and
first/last read times as worked out by hand from the rows, whatever the part
size (a contact's reads split across parts included)."""

from __future__ import annotations

import random
from datetime import timedelta

import numpy as np
import pytest

from personatag.recommend import snapshot as snapshot_mod
from personatag.store import Store
from tests.helpers import NOW, add_contacts

H = timedelta(hours=1)


@pytest.mark.parametrize("part_rows", [1, 2, 7, 200_000])
def test_read_pairs_whatever_the_part_size(
    store: Store, monkeypatch: pytest.MonkeyPatch, part_rows: int
) -> None:
    rng = random.Random(5)
    t = store.tables
    with store.write() as conn:
        conn.execute(
            t.publications.insert(),
            [
                {"pk": p, "id": f"p{p}", "title": f"T{p}", "series": "S", "sector": None,
                 "published_at": NOW - (10 - p) * H if p < 9 else NOW + H,
                 "asset_class": "Rates", "region": "Global"}
                for p in range(1, 11)
            ],
        )  # fmt: skip
    add_contacts(store, [{"pk": c, "id": f"c{c}"} for c in (1, 2, 3, 5, 8)])
    rows = set()
    for _ in range(120):  # repeated pairs, reads after as_of, reports published after it
        c = rng.choice((1, 1, 1, 2, 3, 8))
        rows.add((c, rng.randint(1, 10), NOW - rng.randint(-3, 40) * H))
    with store.write() as conn:
        conn.execute(
            t.reads.insert(),
            [{"contact_pk": c, "publication_pk": p, "read_at": at} for c, p, at in rows],
        )
    monkeypatch.setattr(snapshot_mod, "STREAM_ROWS", part_rows)
    snap = snapshot_mod.load_snapshot(store, NOW)

    want: dict[tuple[int, int], list[int]] = {}
    for c, p, at in rows:
        if at <= NOW and p < 9:
            us = int(at.timestamp() * 1_000_000)
            want.setdefault((c, p), []).append(us)
    got = {}
    m = snap.reads
    for row in range(m.shape[0]):
        for k in range(m.indptr[row], m.indptr[row + 1]):
            pair = (int(snap.contact_pk[row]), int(snap.pub_pk[m.indices[k]]))
            got[pair] = [int(snap.read_first_us[k]), int(snap.read_last_us[k])]
        assert list(m.indices[m.indptr[row] : m.indptr[row + 1]]) == sorted(
            m.indices[m.indptr[row] : m.indptr[row + 1]]
        )
    assert got == {pair: [min(ts), max(ts)] for pair, ts in want.items()}
    assert np.all(m.data == 1.0)
