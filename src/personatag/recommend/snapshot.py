"""The store as arrays at one instant: what the feed model and baselines learn from.

Reports: published strictly before `as_of`. Reads: at or before `as_of` (a read
at `as_of` itself already makes its report ineligible). Memberships: as they
are when the snapshot is taken (personas are defined by attributes, not time).
Reads are loaded with one streamed query, as integers (no datetime objects),
in the reads' key order (contact, time), and reduced to (contact, report)
pairs part by part: memory holds the pairs (20 bytes each), never every read
row at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sqlalchemy import BigInteger, func, select, type_coerce

from personatag.store import Store
from personatag.store.types import from_micros, to_micros

I64 = npt.NDArray[np.int64]
DAY_US = 86_400 * 1_000_000
STREAM_ROWS = 200_000


def _codes(values: Sequence[Any]) -> tuple[I64, list[Any]]:
    """Dense codes for values (None is a value of its own), with the value of each code."""
    names = sorted({v for v in values if v is not None})
    if any(v is None for v in values):
        names.append(None)
    index = {v: i for i, v in enumerate(names)}
    return np.fromiter((index[v] for v in values), np.int64, len(values)), names


@dataclass
class Snapshot:
    as_of: datetime
    as_of_us: int
    pub_pk: I64  # sorted
    pub_published_us: I64
    pub_series: I64
    series_names: list[Any]
    pub_sector: I64
    sector_names: list[Any]
    pub_asset: I64
    pub_region: I64
    pub_titles: list[str]
    pub_rows: list[dict[str, Any]]
    contact_pk: I64  # sorted
    reads: sp.csr_matrix  # contacts x reports, 1.0 per (contact, report) read
    read_first_us: I64  # aligned with reads.data
    read_last_us: I64  # aligned with reads.data
    members: sp.csr_matrix  # contacts x personas, 1.0 per membership
    persona_keys: list[str]
    persona_names: list[str]
    persona_index: dict[str, int] = field(default_factory=dict)
    _pub_index: dict[int, int] = field(default_factory=dict)

    @property
    def n_pubs(self) -> int:
        return len(self.pub_pk)

    def facet(self, name: str) -> I64:
        return {
            "series": self.pub_series,
            "sector": self.pub_sector,
            "asset": self.pub_asset,
            "region": self.pub_region,
        }[name]

    def pub_index(self, pk: int) -> int | None:
        if not self._pub_index:
            self._pub_index = {int(p): i for i, p in enumerate(self.pub_pk.tolist())}
        return self._pub_index.get(int(pk))

    def pub_sector_name(self, j: int) -> str | None:
        name = self.sector_names[int(self.pub_sector[j])]
        return None if name is None else str(name)

    def contact_rows(self, pks: Sequence[int]) -> I64:
        """Row of each contact in `reads`/`members`, -1 for a contact the snapshot lacks."""
        want = np.asarray(pks, dtype=np.int64)
        pos = np.searchsorted(self.contact_pk, want)
        pos = np.minimum(pos, max(len(self.contact_pk) - 1, 0))
        found = (len(self.contact_pk) > 0) & (self.contact_pk[pos] == want)
        return np.where(found, pos, -1).astype(np.int64)

    def first_read_matrix(self) -> sp.csr_matrix:
        return sp.csr_matrix(
            (self.read_first_us, self.reads.indices, self.reads.indptr), shape=self.reads.shape
        )


def _stream_ints(conn: Any, query: Any, width: int) -> I64:
    result = conn.execution_options(stream_results=True, yield_per=STREAM_ROWS).execute(query)
    chunks = [
        np.fromiter(itertools.chain.from_iterable(part), np.int64, width * len(part))
        for part in result.partitions()
    ]
    flat = np.concatenate(chunks) if chunks else np.empty(0, np.int64)
    return flat.reshape(-1, width)


class _Pairs:
    """(contact, report) read pairs, appended in (row, column) order, with the
    first and last read time of each: 20 bytes a pair, in arrays sized up
    front by the count of reads (pages past the pairs written are never
    touched, so they cost no memory) and grown if more reads arrive."""

    def __init__(self, capacity: int, n_contacts: int) -> None:
        self.cols = np.empty(capacity, np.int32)
        self.first = np.empty(capacity, np.int64)
        self.last = np.empty(capacity, np.int64)
        self.per_row = np.zeros(n_contacts, np.int64)
        self.n = 0

    def _room(self, more: int) -> None:
        if self.n + more <= len(self.cols):
            return
        size = max(2 * len(self.cols), self.n + more)
        for name in ("cols", "first", "last"):
            old = getattr(self, name)
            new = np.empty(size, old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def add(self, rows: I64, cols: I64, at: I64, n_cols: int) -> None:
        """Reads of whole contacts, contacts ascending, each contact's reads by time."""
        if not len(rows):
            return
        key = rows * max(n_cols, 1) + cols
        order = np.argsort(key, kind="stable")  # stable: each pair's reads stay in time order
        key, at = key[order], at[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = np.r_[starts[1:], len(key)] - 1
        unique = key[starts]
        u_row = unique // max(n_cols, 1)
        n = len(unique)
        self._room(n)
        self.cols[self.n : self.n + n] = unique % max(n_cols, 1)
        self.first[self.n : self.n + n] = at[starts]
        self.last[self.n : self.n + n] = at[ends]
        self.n += n
        rows_here, counts = np.unique(u_row, return_counts=True)
        self.per_row[rows_here] += counts


def _read_matrix(
    conn: Any, store: Store, as_of_us: int, contact_pk: I64, pub_pk: I64
) -> tuple[sp.csr_matrix, I64, I64]:
    """Reads at or before as_of as a (contacts x reports) matrix of ones, with
    the first and last read time of each pair (aligned with its data).

    The reads are streamed in the primary key's order (contact, time) and
    reduced to pairs a few thousand contacts at a time, so memory holds the
    pairs, not every read row and its sort (which took about 110 bytes a read
    at its peak)."""
    rc = store.tables.reads.c
    where = rc.read_at <= as_of_us
    total = int(conn.scalar(select(func.count()).select_from(store.tables.reads).where(where)) or 0)
    n_c, n_p = len(contact_pk), len(pub_pk)
    pairs = _Pairs(total, n_c)
    query = (
        select(rc.contact_pk, rc.publication_pk, type_coerce(rc.read_at, BigInteger))
        .where(where)
        .order_by(rc.contact_pk, rc.read_at, rc.publication_pk)
    )
    result = conn.execution_options(stream_results=True, yield_per=STREAM_ROWS).execute(query)
    carry = np.empty((0, 3), np.int64)

    def add(block: I64) -> None:
        c_row = np.searchsorted(contact_pk, block[:, 0])
        p_col = np.searchsorted(pub_pk, block[:, 1])
        ok = (c_row < n_c) & (p_col < n_p)
        ok[ok] &= (contact_pk[c_row[ok]] == block[ok, 0]) & (pub_pk[p_col[ok]] == block[ok, 1])
        pairs.add(c_row[ok], p_col[ok], block[ok, 2], n_p)

    for part in result.partitions():
        block = np.fromiter(itertools.chain.from_iterable(part), np.int64, 3 * len(part))
        block = block.reshape(-1, 3)
        if len(carry):
            block = np.concatenate([carry, block])
        # The last contact's reads may go on in the next part: keep them for it.
        cut = int(np.searchsorted(block[:, 0], block[-1, 0], side="left"))
        carry = block[cut:]
        add(block[:cut])
    add(carry)
    n = pairs.n
    indptr = np.r_[0, np.cumsum(pairs.per_row)].astype(np.int64)
    matrix = sp.csr_matrix((np.ones(n, np.float32), pairs.cols[:n], indptr), shape=(n_c, n_p))
    return matrix, pairs.first[:n], pairs.last[:n]


def load_snapshot(store: Store, as_of: datetime) -> Snapshot:
    """Read the store into arrays as at `as_of` (see the module docstring)."""
    as_of_us = to_micros(as_of)
    t = store.tables
    pc = t.publications.c
    # Text is read only for publications and personas (thousands of values):
    # stored text that is not UTF-8 reads as U+FFFD (store/text.py).
    with store.read(lenient=True) as conn:
        pubs = conn.execute(
            select(
                pc.pk,
                type_coerce(pc.published_at, BigInteger),
                pc.id,
                pc.title,
                pc.series,
                pc.sector,
                pc.asset_class,
                pc.region,
            )
            .where(pc.published_at < as_of_us)
            .order_by(pc.pk)
        ).all()
        contact_pk = _stream_ints(conn, select(t.contacts.c.pk).order_by(t.contacts.c.pk), 1)
        personas = conn.execute(
            select(t.personas.c.pk, t.personas.c.key, t.personas.c.name)
            .where(t.personas.c.archived_at.is_(None))
            .order_by(t.personas.c.pk)
        ).all()
        mc = t.membership_rows.c
        members = _stream_ints(conn, select(mc.contact_pk, mc.persona_pk).distinct(), 2)
        contact_pk = contact_pk.ravel()
        pub_pk = np.array([r[0] for r in pubs], dtype=np.int64)
        matrix, read_first, read_last = _read_matrix(conn, store, as_of_us, contact_pk, pub_pk)
    published = np.array([r[1] for r in pubs], dtype=np.int64)
    series, series_names = _codes([r[4] for r in pubs])
    sector, sector_names = _codes([r[5] for r in pubs])
    asset, _ = _codes([r[6] for r in pubs])
    region, _ = _codes([r[7] for r in pubs])
    rows = [
        {"pk": r[0], "published_at": from_micros(r[1]), "id": r[2], "title": r[3],
         "series": r[4], "sector": r[5], "asset_class": r[6], "region": r[7]}
        for r in pubs
    ]  # fmt: skip

    n_c = len(contact_pk)
    p_keys = [str(p[1]) for p in personas]
    p_pks = np.array([int(p[0]) for p in personas], dtype=np.int64)  # sorted by the query
    m_row = np.searchsorted(contact_pk, members[:, 0])
    m_col = np.searchsorted(p_pks, members[:, 1])
    m_ok = (m_row < n_c) & (m_col < len(p_pks))
    m_ok[m_ok] &= (contact_pk[m_row[m_ok]] == members[m_ok, 0]) & (
        p_pks[m_col[m_ok]] == members[m_ok, 1]
    )
    member_m = sp.csr_matrix(
        (np.ones(int(m_ok.sum()), np.float32), (m_row[m_ok], m_col[m_ok])),
        shape=(n_c, len(personas)),
    )
    return Snapshot(
        as_of=as_of,
        as_of_us=as_of_us,
        pub_pk=pub_pk,
        pub_published_us=published,
        pub_series=series,
        series_names=series_names,
        pub_sector=sector,
        sector_names=sector_names,
        pub_asset=asset,
        pub_region=region,
        pub_titles=[str(r[3] or r[2]) for r in pubs],
        pub_rows=rows,
        contact_pk=contact_pk,
        reads=matrix,
        read_first_us=read_first,
        read_last_us=read_last,
        members=member_m,
        persona_keys=p_keys,
        persona_names=[str(p[2]) for p in personas],
        persona_index={k: i for i, k in enumerate(p_keys)},
    )
