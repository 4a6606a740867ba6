"""Peak memory of a feed model build (what `personatag serve` and `personatag feed`
spawn when no saved model is current). One run, one process.

    /usr/bin/time -v python bench/feed_build_memory.py --store DIR/store.db [--feeds 2000]
        [--save DIR/feed-model-bench]

Prints the build's seconds, the process's peak RSS after loading the snapshot
and after the build (ru_maxrss), the similarity matrix's size and a digest of
it, and a digest of the first --feeds contacts' feeds (top 10, with scores and
reasons), so two versions of the code can be compared on the same store. With --save,
also the peak after writing the model as `recommend.saved` does (the folder is
made; remove it after).
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import time
from datetime import UTC, datetime
from pathlib import Path

from personatag.config import Settings
from personatag.recommend import FeedModel
from personatag.recommend.saved import save
from personatag.recommend.snapshot import load_snapshot
from personatag.store import open_store


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--as-of", default="2026-12-06T00:00:00+00:00")
    ap.add_argument("--feeds", type=int, default=2000)
    ap.add_argument("--save", type=Path, help="also save the model in this folder")
    args = ap.parse_args()
    store = open_store(f"sqlite:///{args.store}")
    as_of = datetime.fromisoformat(args.as_of).astimezone(UTC)
    t0 = time.monotonic()
    snap = load_snapshot(store, as_of)
    t1 = time.monotonic()
    print(f"snapshot: {t1 - t0:.1f} s, peak RSS {peak_mib():.0f} MiB, reads nnz {snap.reads.nnz:,}")
    model = FeedModel(snap, Settings())
    t2 = time.monotonic()
    sim = model.similarity
    digest = hashlib.sha256()
    for a in (sim.indptr, sim.indices, sim.data):
        digest.update(a.tobytes())
    print(f"model: {t2 - t1:.1f} s, peak RSS {peak_mib():.0f} MiB")
    print(f"similarity: nnz {sim.nnz:,} sha256 {digest.hexdigest()[:16]}")
    if args.save:
        t3 = time.monotonic()
        save(model, args.save, store_id=0, versions_=(0,), settings=Settings())
        print(f"save: {time.monotonic() - t3:.1f} s, peak RSS {peak_mib():.0f} MiB")
    pks = snap.contact_pk[: args.feeds].tolist()
    feeds = hashlib.sha256()
    for pk, items in model.recommend_many(pks, 10).items():
        feeds.update(repr((pk, items)).encode())
    print(f"feeds of {len(pks)} contacts: sha256 {feeds.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
