"""The id block: a set of contact pks as compact bytes.

A block stores the pks sorted, delta-encoded in the narrowest unsigned width
that fits, then zlib-compressed: 10M consecutive contacts take about 10 KB,
10M scattered over 20M about 4 MB. Bulk entries of the membership log and
batch rows of the change feed hold their pks this way.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

_MAGIC = b"PTI1"
_WIDTHS = (("uint8", 1), ("uint16", 2), ("uint32", 4), ("uint64", 8))


def encode_ids(ids: np.ndarray) -> bytes:
    """Sorted, unique int64 ids -> compact bytes (see module docstring)."""
    import numpy as np  # only bulk changes need it; keeps CLI start-up light

    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        # np.unique hashes (seconds on 10M); ids usually arrive sorted already.
        ids = np.sort(ids)
        ids = ids[np.concatenate(([True], ids[1:] != ids[:-1]))]
    deltas = np.empty(len(ids), dtype=np.int64)
    if len(ids):
        deltas[0] = ids[0]
        np.subtract(ids[1:], ids[:-1], out=deltas[1:])
    top = int(deltas.max()) if len(deltas) else 0
    dtype, width = next((d, w) for d, w in _WIDTHS if top <= np.iinfo(d).max)
    payload = deltas.astype(dtype).tobytes()  # deltas >= 0: ids are sorted and unique
    return _MAGIC + struct.pack("<BQ", width, len(ids)) + zlib.compress(payload, 1)


def encode_run(lo: int, hi: int) -> bytes:
    """`encode_ids` of the consecutive ids lo..hi (lo <= hi), the same bytes,
    without building them: 10M ids take milliseconds, not a pass over 80 MB."""
    if lo > hi:
        raise ValueError("an empty run")
    count = hi - lo + 1
    top = max(lo, 1) if count > 1 else lo
    width = next(w for _, w in _WIDTHS if top < 1 << (8 * w))
    payload = lo.to_bytes(width, "little") + (1).to_bytes(width, "little") * (count - 1)
    return _MAGIC + struct.pack("<BQ", width, count) + zlib.compress(payload, 1)


def decode_ids(blob: bytes) -> np.ndarray:
    """Compact bytes -> the sorted int64 ids (ValueError if not an id block)."""
    import numpy as np  # only bulk changes need it; keeps CLI start-up light

    if blob[:4] != _MAGIC:
        raise ValueError("not a personatag id block")
    width, count = struct.unpack("<BQ", blob[4:13])
    dtype = {w: d for d, w in _WIDTHS}[width]
    deltas = np.frombuffer(zlib.decompress(blob[13:]), dtype=dtype)
    if len(deltas) != count:
        raise ValueError("corrupt id block: count does not match")
    return np.cumsum(deltas.astype(np.int64))
