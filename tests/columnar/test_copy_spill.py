"""The build sorts events by time through spill files (spill.py): the result
is the same multiset of events, sorted, whatever the bucket edges."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from personatag.config import Settings
from personatag.engines.columnar import spill
from personatag.engines.columnar.copy import open_frame
from personatag.generate.run import generate
from personatag.store import Store
from tests.columnar.support import assert_exact

END = datetime(2026, 6, 30, tzinfo=UTC)
DTYPES = {"row": np.int32, "at": np.int64, "publication": np.int32}


def _chunks(rng: np.random.Generator, sizes: list[int], times: str) -> list[dict[str, np.ndarray]]:
    out = []
    for n in sizes:
        if times == "equal":
            at = np.full(n, 7, dtype=np.int64)
        elif times == "extremes":
            at = rng.choice(np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64), n)
        else:
            at = rng.integers(-(10**15), 10**15, n, dtype=np.int64)
        out.append(
            {
                "row": rng.integers(0, 2**31 - 1, n, dtype=np.int32),
                "at": at,
                "publication": rng.integers(0, 1000, n, dtype=np.int32),
            }
        )
    return out


@pytest.mark.parametrize("times", ["random", "equal", "extremes"])
@pytest.mark.parametrize("in_memory", [0, 5, 10**9])
def test_write_sorted_keeps_every_event_in_time_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, times: str, in_memory: int
) -> None:
    monkeypatch.setattr(spill, "IN_MEMORY", in_memory)
    monkeypatch.setattr(spill, "BUCKETS", 8)
    chunks = _chunks(np.random.default_rng(4), [0, 3, 500, 0, 1200, 7], times)
    keys = spill.write_sorted(tmp_path, "reads", iter(chunks), DTYPES)
    assert keys == ["row", "at", "publication"]
    got = {k: np.load(tmp_path / f"reads.{k}.npy", mmap_mode="r") for k in keys}
    assert all(got[k].dtype == DTYPES[k] for k in keys)
    assert bool(np.all(got["at"][1:] >= got["at"][:-1]))
    want = Counter(
        zip(*(np.concatenate([c[k] for c in chunks]).tolist() for k in keys), strict=True)
    )
    assert Counter(zip(*(got[k].tolist() for k in keys), strict=True)) == want
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".spill")] == []


def test_no_events(tmp_path: Path) -> None:
    keys = spill.write_sorted(tmp_path, "logins", iter([]), {"row": np.int32, "at": np.int64})
    assert [len(np.load(tmp_path / f"logins.{k}.npy")) for k in keys] == [0, 0]


def test_a_build_that_spills_is_exact(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spill, "IN_MEMORY", 50)
    monkeypatch.setattr(spill, "BUCKETS", 5)
    generate(store, contacts=60, seed=8, end=END)
    s = Settings(data_dir=tmp_path / "data", store_url=store.engine.url.render_as_string(False))
    frame = open_frame(store, s)
    assert sum(len(seg.at) for seg in frame.reads) > 50
    assert all(bool(np.all(np.diff(np.asarray(seg.at)) >= 0)) for seg in frame.reads)
    assert_exact(frame, store)
