"""A string column's sorted dictionary, built with bounded memory.

The build's Encoder (load.py) gives each distinct string a provisional code
in the order it first appears (a dict lookup per value: on this data 3-10x
faster than np.unique). Held whole, that dict is the build's largest object:
a column of 10M distinct ids or e-mails is ~1 GiB of Python strings and dict
slots. So past `RUN` distinct strings the dict is flushed as a sorted run (a
file of its strings in order, blocks of JSON lines) and emptied; only the map
from its provisional codes to their rank in the run is kept (int32). At the
end the runs are merged (heapq.merge, a block of each run at a time) into
the dictionary file, which gives each run's ranks their final codes. Python
str order (code points) is the order of the merge and of a single run, so
the dictionary is sorted exactly as one sort of every string would be.
"""

from __future__ import annotations

import heapq
import itertools
import json
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from personatag.engines.columnar.frame import Array

RUN = 200_000  # distinct strings held before a run is written
BLOCK = 8_192  # strings per line of a run file


def _sorted(index: dict[str, int]) -> tuple[list[str], Array]:
    """(the strings of `index` sorted, the rank of each provisional code)."""
    words = np.empty(len(index), dtype=object)
    words[:] = list(index)
    order = np.argsort(words, kind="stable")
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return words[order].tolist(), rank


def _read_run(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            yield from json.loads(line)


class Runs:
    """Distinct strings given provisional codes, flushed to sorted runs under
    `spill` (None: held whole, never flushed)."""

    def __init__(self, spill: Path | None) -> None:
        self.spill = spill
        self.index: dict[str, int] = {}
        self.files: list[Path] = []
        self.ranks: list[Array] = []  # per flushed run: provisional code -> rank
        self.bounds: list[int] = [0]  # codes written before each run
        self.nul = False  # a string holds a NUL (the dictionary is then JSON)

    def full(self) -> bool:
        return self.spill is not None and len(self.index) > RUN

    def flush(self, written: int) -> None:
        """Write the strings seen since the last flush as a run; `written`:
        the codes written so far (the run's end)."""
        if self.spill is None:
            raise ValueError("runs held in memory are not flushed")
        words, rank = _sorted(self.index)
        path = self.spill / f"run{len(self.files)}"
        with open(path, "w", encoding="utf-8") as out:
            for start in range(0, len(words), BLOCK):
                block = words[start : start + BLOCK]
                self.nul = self.nul or "\x00" in "".join(block)
                out.write(json.dumps(block) + "\n")
        self.files.append(path)
        self.ranks.append(rank)
        self.bounds.append(written)
        self.index = {}

    def finish(self, written: int) -> tuple[Iterator[str], list[tuple[int, int, Array]]]:
        """(an iterator of the sorted distinct strings; per run (first code,
        end, map of provisional code to final code), filled once the iterator
        is exhausted). The last run is merged from memory."""
        words, rank = _sorted(self.index)
        self.index = {}
        self.nul = self.nul or any("\x00" in w for w in words)
        self.ranks.append(rank)
        self.bounds.append(written)
        sources: list[Iterable[str]] = [_read_run(p) for p in self.files]
        sources.append(words)
        finals = [array("i") for _ in sources]
        maps: list[tuple[int, int, Array]] = []

        def merged() -> Iterator[str]:
            if len(sources) == 1:  # one run: its ranks are the codes
                yield from words
                maps.append((self.bounds[0], self.bounds[1], rank))
                return
            runs = [zip(s, itertools.repeat(r)) for r, s in enumerate(sources)]
            code, last = -1, None
            for word, r in heapq.merge(*runs):
                if word != last:
                    code, last = code + 1, word
                    yield word
                finals[r].append(code)
            for r, ranks in enumerate(self.ranks):
                final = np.frombuffer(finals[r], dtype=np.int32) if len(ranks) else ranks
                maps.append((self.bounds[r], self.bounds[r + 1], final[ranks]))
            for path in self.files:
                path.unlink()

        return merged(), maps
