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


@pytest.mark.parametrize("block", [1, 3, 10**9])
def test_write_merged_keeps_the_live_events_in_time_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(spill, "MERGE_BLOCK", block)
    rng = np.random.default_rng(6)
    (big,) = _chunks(rng, [40], "random")
    big = {k: v[np.argsort(big["at"], kind="stable")] for k, v in big.items()}
    big["at"][10:15] = big["at"][10]  # ties across block edges
    live = rng.random(40) < 0.7
    (small,) = _chunks(rng, [9], "random")
    small["at"][:3] = big["at"][10]
    keys = spill.write_merged(tmp_path, "reads", [(big, live, True), (small, None, False)], DTYPES)
    got = {k: np.load(tmp_path / f"reads.{k}.npy") for k in keys}
    assert bool(np.all(got["at"][1:] >= got["at"][:-1]))
    want = Counter(zip(*(big[k][live].tolist() for k in keys), strict=True)) + Counter(
        zip(*(small[k].tolist() for k in keys), strict=True)
    )
    assert Counter(zip(*(got[k].tolist() for k in keys), strict=True)) == want


def test_compaction_merges_in_blocks_exactly(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from personatag.contacts import add_events
    from personatag.engines.columnar import copy

    monkeypatch.setattr(spill, "MERGE_BLOCK", 17)
    mapped: list[bool] = []
    real = spill._read_block

    def read_block(array: np.ndarray, lo: int, hi: int) -> np.ndarray:
        mapped.append(isinstance(array, np.memmap))
        got = real(array, lo, hi)
        assert not isinstance(got, np.memmap)  # read from the file, not mapped
        return got

    monkeypatch.setattr(spill, "_read_block", read_block)
    monkeypatch.setattr(copy, "PERSIST_CHANGES", 1)
    monkeypatch.setattr(copy, "COMPACT_SHARE", 0.0)
    generate(store, contacts=40, seed=3, end=END)
    s = Settings(data_dir=tmp_path / "data", store_url=store.engine.url.render_as_string(False))
    open_frame(store, s)
    add_events(store, "c00000007", reads=[("p000001", END)], logins=[END])
    assert_exact(open_frame(store, s), store)
    folder = copy.folder_of(s, store)
    assert copy.read_manifest(folder)["delta"] is None  # compacted into one base
    assert len(mapped) > 3 and all(mapped)  # the base's events, a block at a time
    copy._CACHE.clear()
    frame = open_frame(store, s)
    assert [seg.live is None for seg in frame.reads] == [True]
    assert all(bool(np.all(np.diff(np.asarray(seg.at)) >= 0)) for seg in frame.reads)
    assert_exact(frame, store)


@pytest.mark.parametrize("run", [0, 3])
def test_a_build_whose_dictionaries_merge_from_runs_is_exact(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run: int
) -> None:
    """String (and list) columns with more distinct values than `runs.RUN`
    are written in sorted runs and merged: the files are those of a build
    that held every dictionary whole (the dictionaries sorted by code point,
    non-ASCII strings among them)."""
    from personatag.contacts import set_contact
    from personatag.engines.columnar import copy, load, runs

    generate(store, contacts=50, seed=12, end=END)
    set_contact(store, "c00000002", {"region": "", "interests": "", "email": ""})
    set_contact(store, "c00000003", {"email": "a\tb", "interests": "x y, Ärger"})
    set_contact(store, "late", {"region": "Ångström", "email": "\U0001f600@x"}, create=True)
    url = store.engine.url.render_as_string(False)
    whole = Settings(data_dir=tmp_path / "whole", store_url=url)
    assert_exact(open_frame(store, whole), store)
    monkeypatch.setattr(load, "CHUNK", 7)
    monkeypatch.setattr(runs, "RUN", run)
    monkeypatch.setattr(runs, "BLOCK", 2)
    flushed: list[int] = []
    real = runs.Runs.flush

    def spy(self: runs.Runs, written: int) -> None:
        flushed.append(written)
        real(self, written)

    monkeypatch.setattr(runs.Runs, "flush", spy)
    copy._CACHE.clear()
    copy._FRAMES.clear()
    in_runs = Settings(data_dir=tmp_path / "runs", store_url=url)
    frame = open_frame(store, in_runs)
    assert len(flushed) > 10
    assert_exact(frame, store)
    bases = []
    for settings in (whole, in_runs):
        folder = copy.folder_of(settings, store)
        bases.append(folder / copy.read_manifest(folder)["base"])
    names = sorted(p.name for p in bases[0].glob("contacts.*"))
    assert names == sorted(p.name for p in bases[1].glob("contacts.*"))
    for name in names:
        assert (bases[0] / name).read_bytes() == (bases[1] / name).read_bytes(), name
    for col in frame.contacts.columns.values():
        if col.dictionary is not None:
            words = list(col.dictionary)
            assert words == sorted(set(words))


@pytest.mark.parametrize("nul", [False, True])
def test_runs_merge_into_one_sorted_dictionary(tmp_path: Path, nul: bool) -> None:
    """Runs of overlapping strings merge into the sorted distinct strings, each
    provisional code mapped to its string's place (NUL: written as JSON)."""
    from personatag.engines.columnar import runs, segment

    rng = np.random.default_rng(5)
    alphabet = ["", "a", "b", "Å", "\U0001f600", "z", "\x00" if nul else "y"]
    picks = [rng.integers(0, len(alphabet), rng.integers(0, 4)) for _ in range(500)]
    strings = ["".join(alphabet[i] for i in pick) for pick in picks]
    built = runs.Runs(tmp_path)
    codes: list[int] = []
    for start in range(0, len(strings), 40):
        codes += [built.index.setdefault(s, len(built.index)) for s in strings[start : start + 40]]
        if len(built.index) > 20:
            built.flush(len(codes))
    assert len(built.files) > 3
    words, maps = built.finish(len(codes))
    size = segment.write_dictionary(tmp_path, "t", 0, words, built.nul)
    assert size == len(set(strings))
    assert tmp_path.joinpath("t.0.dict.json").exists() == nul
    dictionary = segment._load_dictionary(tmp_path / "t.0", size).tolist()
    assert dictionary == sorted(set(strings))
    final = np.asarray(codes, dtype=np.int32)
    for lo, hi, to in maps:
        final[lo:hi] = to[final[lo:hi]]
    assert [dictionary[c] for c in final] == strings
    assert not list(tmp_path.glob("run*"))
