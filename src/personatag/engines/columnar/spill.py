"""Write events sorted by time with bounded memory.

`write_merged` (compaction) merges sorted segments (the old base, its dead
rows left out, and the delta's events) a block of the largest at a time.

Chunks of events (in contact order, as the store hands them over) are
appended to one spill file per time bucket; the bucket edges are quantiles of
the first chunks' times. Then each bucket in turn is read back, sorted and
appended to the `.npy` files. Memory holds a chunk or a bucket (about 1/64
of the events), not every event: at 100M reads the whole sort would need
gigabytes. Few events are sorted in memory, without spill files.
"""

from __future__ import annotations

import mmap
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

from personatag.engines.columnar.frame import Array

BUCKETS = 64
IN_MEMORY = 2_000_000  # events below which nothing is spilled


def _npy_header(out: IO[bytes], dtype: Any, n: int) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
    np.lib.format.write_array_header_1_0(out, {**header, "shape": (n,)})


def write_sorted(
    folder: Path, name: str, chunks: Iterable[dict[str, Array]], dtypes: dict[str, Any]
) -> list[str]:
    """Write the concatenated `chunks` (arrays by key, `at` among them),
    sorted by `at`, as `name.KEY.npy` files in `folder`; the keys written."""
    record = np.dtype([(key, dtypes[key]) for key in dtypes])
    held: list[Array] = []
    count = 0
    edges: Array | None = None
    spill = folder / f".spill-{name}"
    files: list[IO[bytes]] = []
    try:
        for chunk in chunks:
            rec = np.empty(len(chunk["at"]), dtype=record)
            for key in dtypes:
                rec[key] = chunk[key]
            count += len(rec)
            if edges is None:
                held.append(rec)
                if count < IN_MEMORY or count == 0:
                    continue
                # Enough seen to place the bucket edges (times of the sample at
                # its quantiles, exact int64): spill what is held.
                sample = np.sort(np.concatenate([h["at"] for h in held]))
                edges = np.unique(sample[np.arange(1, BUCKETS) * len(sample) // BUCKETS])
                spill.mkdir()
                files = [open(spill / str(b), "wb") for b in range(len(edges) + 1)]  # noqa: SIM115
                for h in held:
                    _spill(h, edges, files)
                held = []
            else:
                _spill(rec, edges, files)
        for f in files:
            f.close()
        outs = {key: open(folder / f"{name}.{key}.npy", "wb") for key in dtypes}  # noqa: SIM115
        try:
            for key, out in outs.items():
                _npy_header(out, dtypes[key], count)
            parts: Iterable[Array]
            if edges is None:
                parts = [np.concatenate(held) if held else np.empty(0, record)]
            else:
                parts = (np.fromfile(spill / str(b), dtype=record) for b in range(len(files)))
            for part in parts:
                order = np.argsort(part["at"], kind="stable")
                for key, out in outs.items():
                    np.ascontiguousarray(part[key][order]).tofile(out)
        finally:
            for out in outs.values():
                out.close()
    finally:
        for f in files:
            f.close()
        shutil.rmtree(spill, ignore_errors=True)
    return list(dtypes)


def _spill(rec: Array, edges: Array, files: list[IO[bytes]]) -> None:
    bucket = np.searchsorted(edges, rec["at"], side="right")
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(len(files) + 1))
    grouped = rec[order]
    for b in range(len(files)):
        lo, hi = int(bounds[b]), int(bounds[b + 1])
        if hi > lo:
            grouped[lo:hi].tofile(files[b])


# Events of the largest segment merged at a time: a block costs ~60 bytes an
# event in temporaries (1M: ~60 MiB; 4M measured +250 MiB at the peak).
MERGE_BLOCK = 1_000_000


def write_merged(
    folder: Path,
    name: str,
    segments: list[tuple[dict[str, Array], Array | None, bool]],
    dtypes: dict[str, Any],
) -> list[str]:
    """Write the live events of `segments` ((arrays by key, live mask or
    None, sorted by `at`) each) sorted by `at` as `name.KEY.npy` files, a
    block of the largest segment at a time; the keys written. The other
    segments (a delta's events: small) are held whole."""
    if not segments:
        return write_sorted(folder, name, [], dtypes)
    big = max(range(len(segments)), key=lambda i: len(segments[i][0]["at"]))
    arrays, live, is_sorted = segments[big]
    if not is_sorted:  # not the case for a base: sort it all, through spill files
        return write_sorted(folder, name, (_live(*s) for s in segments), dtypes)
    small = [_live(*s) for i, s in enumerate(segments) if i != big]
    rest = {
        k: np.concatenate([s[k] for s in small]) if small else np.zeros(0, dtypes[k])
        for k in dtypes
    }
    order = np.argsort(rest["at"], kind="stable")
    rest = {k: np.asarray(v)[order].astype(dtypes[k]) for k, v in rest.items()}
    n_big = len(arrays["at"])
    count = (n_big if live is None else int(np.count_nonzero(live))) + len(rest["at"])
    outs = {key: open(folder / f"{name}.{key}.npy", "wb") for key in dtypes}  # noqa: SIM115
    try:
        for key, out in outs.items():
            _npy_header(out, dtypes[key], count)
        taken = 0
        for lo in range(0, max(n_big, 1), MERGE_BLOCK):
            hi = min(n_big, lo + MERGE_BLOCK)
            block = {k: _read_block(arrays[k], lo, hi) for k in dtypes}
            if live is not None:
                keep = np.asarray(live[lo:hi])
                block = {k: v[keep] for k, v in block.items()}
            # The smaller segments' events up to this block's last time (all
            # that are left, after the last block).
            upto = (
                len(rest["at"])
                if hi >= n_big
                else int(np.searchsorted(rest["at"], arrays["at"][hi - 1], side="right"))
            )
            part = {k: np.concatenate([block[k], rest[k][taken:upto]]) for k in dtypes}
            taken = max(taken, upto)
            by_time = np.argsort(part["at"], kind="stable")
            for key, out in outs.items():
                np.ascontiguousarray(part[key][by_time].astype(dtypes[key])).tofile(out)
    finally:
        for out in outs.values():
            out.close()
    return list(dtypes)


def _read_block(array: Array, lo: int, hi: int) -> Array:
    """`array[lo:hi]`; from a file mapped whole (a base's events), read from
    the file instead: the pages of a mapping count in the process's RSS, so
    merging through the mapping of a 100M-read base would add its 1.5 GiB."""
    mapped = isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap)
    if mapped and array.ndim == 1 and hi > lo:
        start = array.offset + lo * array.itemsize
        return np.fromfile(array.filename, dtype=array.dtype, count=hi - lo, offset=start)
    return np.asarray(array[lo:hi])


def _live(arrays: dict[str, Array], live: Array | None, _sorted: bool) -> dict[str, Array]:
    if live is None:
        return {k: np.asarray(v) for k, v in arrays.items()}
    keep = np.asarray(live)
    return {k: np.asarray(v)[keep] for k, v in arrays.items()}
