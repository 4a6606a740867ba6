"""Peak RSS of building the columnar copy from scratch, pass by pass.

    python bench/columnar_build_memory.py DATA_DIR

DATA_DIR holds a generated store (use a scratch copy: its columnar folder is
replaced). The process's high-water mark (VmHWM) is reset at the start of
each pass (`/proc/self/clear_refs`, Linux) and read at its end, so each pass
reports its own peak: the integer columns of contacts, each pass over the
string columns, publications, reads, logins. Prints the whole build's wall
and CPU time and its peak.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from personatag.config import Settings
from personatag.engines.columnar import copy, load, spill
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
    args = ap.parse_args()
    real_iter = load.iter_int_columns

    def iter_int_columns(conn: Any, columns: Any, **kwargs: Any) -> Iterator[Any]:
        if kwargs["key"].table.name != "contacts":  # events: inside their pass
            yield from real_iter(conn, columns, **kwargs)
            return
        with phase("contacts: read integers"):
            yield from real_iter(conn, columns, **kwargs)

    load.iter_int_columns = iter_int_columns
    load._encode_pass = wrapped(
        load._encode_pass, lambda conn, query, encoders: "contacts: read the others"
    )
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


if __name__ == "__main__":
    main()
