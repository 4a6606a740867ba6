"""Peak RSS of building the columnar copy from scratch, pass by pass.

    python bench/columnar_build_memory.py DATA_DIR [--changes N]

DATA_DIR holds a generated store (use a scratch copy: its columnar folder is
replaced). The process's high-water mark (VmHWM) is reset at the start of
each pass (`/proc/self/clear_refs`, Linux) and read at its end, so each pass
reports its own peak: the integer columns of contacts, each pass over the
string columns, publications, reads, logins. Prints the whole build's wall
and CPU time and its peak. With `--changes N`, then N whole-row changes
(contacts 1..N, no fields named, as after `generate`) are written into the
store and the copy caught up: past 5% of the contacts that compacts it into
a new base, every contact column rewritten (its peak reported apart).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import text

from personatag.config import Settings
from personatag.engines.columnar import copy, load, segment, spill
from personatag.store import open_store


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


PEAKS: list[tuple[str, float, float, float]] = []


@contextlib.contextmanager
def phase(label: str) -> Iterator[None]:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start, t = _status("VmRSS"), time.perf_counter()
    try:
        yield
    finally:
        PEAKS.append((label, start, _status("VmHWM"), time.perf_counter() - t))


def wrapped(fn: Callable[..., Any], label: Callable[..., str]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with phase(label(*args, **kwargs)):
            return fn(*args, **kwargs)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--changes", type=int, default=0)
    args = ap.parse_args()
    real_iter = load.iter_int_columns

    def iter_int_columns(conn: Any, columns: Any, **kwargs: Any) -> Iterator[Any]:
        if kwargs["key"].table.name != "contacts":  # events: inside their pass
            yield from real_iter(conn, columns, **kwargs)
            return
        with phase("contacts: read integers"):
            yield from real_iter(conn, columns, **kwargs)

    load.iter_int_columns = iter_int_columns
    load._encode_pass = wrapped(load._encode_pass, lambda *a: "contacts: read the others")
    if hasattr(load.Encoder, "write"):  # a column written at a time
        load.Encoder.write = wrapped(  # type: ignore[method-assign]
            load.Encoder.write, lambda enc, folder, table, index, field, rows: f"contacts: {field}"
        )
    load.publications = wrapped(load.publications, lambda *a: "publications")
    spill.write_sorted = wrapped(spill.write_sorted, lambda folder, name, *a: name)
    s = Settings(data_dir=args.data_dir)
    store = open_store(s.resolved_store_url)
    folder = copy.folder_of(s, store)
    cpu, t = time.process_time(), time.perf_counter()
    with copy.writing(folder):
        copy.build(store, folder)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"{'pass':60} {'RSS at start':>12} {'peak':>8} {'time':>7}")
    for label, start, peak, took in PEAKS:
        print(f"{label[:60]:60} {start:9.0f} MiB {peak:4.0f} MiB {took:6.1f} s")
    # Resetting VmHWM resets ru_maxrss too: the build's peak is the largest pass's.
    peak = max(p[2] for p in PEAKS)
    print(f"build: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {peak:.0f} MiB")
    if args.changes:
        with store.write() as conn:
            conn.execute(
                text("UPDATE contacts SET seniority = coalesce(seniority, 0) + 1 WHERE pk <= :n"),
                {"n": args.changes},
            )
            conn.execute(
                text(
                    "INSERT INTO changes (at, kind, contact_pk, n, fields)"
                    " SELECT 0, 'contact', pk, 1, NULL FROM contacts WHERE pk <= :n"
                ),
                {"n": args.changes},
            )
        copy._CACHE.clear()
        copy._FRAMES.clear()
        del PEAKS[:]
        copy.catch_up = wrapped(copy.catch_up, lambda *a: "catch-up")
        segment.column_of = wrapped(segment.column_of, lambda t, f: f"compaction: make {f}")
        segment.write_column = wrapped(
            segment.write_column, lambda folder, t, i, f, *a, **k: f"compaction: write {f}"
        )
        spill.write_merged = wrapped(spill.write_merged, lambda f, n, *a: f"compaction: {n}")
        t = time.perf_counter()
        copy.open_frame(store, s)
        took = time.perf_counter() - t
        for label, start, peak, took_phase in PEAKS:
            print(f"{label[:60]:60} {start:9.0f} MiB {peak:4.0f} MiB {took_phase:6.1f} s")
        manifest = copy.read_manifest(folder)
        what = "compacted" if manifest["delta"] is None else "delta persisted"
        print(f"catch-up after {args.changes:,} whole-row changes ({what}): {took:.1f} s,", end=" ")
        print(f"peak RSS {max(p[2] for p in PEAKS):.0f} MiB")


if __name__ == "__main__":
    main()
