"""The reading feed's ranking model: a documented blend over the whole catalogue.

For contact c and every eligible report i (published before `as_of`, not read
by c at or before `as_of`):

    score = (w_persona * P + w_coverage * C + w_similar * S) * (1 - w_fresh + w_fresh * F)
            + sum of the boosts of c's personas' rules that i satisfies

P  popularity within c's personas: decayed reads of i by members, per member,
   averaged over the personas c holds (everyone's, if c holds none);
C  coverage: the lift of i's series, sector, asset class and region in c's own
   reads, smoothed towards c's personas' reading (a few pseudo-reads);
S  item-to-item similarity: c's reads times the BM25 item-kNN matrix (implicit's,
   fitted part by part: `bm25_item_knn`);
F  freshness: learned from the reads (how much a report of i's age is read over
   the next feed_fresh_horizon_days, per report, scaled to at most 1; see
   `learned_freshness`), or 0.5 ** (age / feed_half_life_days) when
   feed_freshness is "half-life" or there are too few reads to learn from.
P, C and S are each divided by their largest value over c's eligible reports,
so the weights compare like with like. docs/feed.md has the reasoning.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from personatag.config import Settings
from personatag.errors import InputError
from personatag.recommend.snapshot import DAY_US, Snapshot, load_snapshot
from personatag.store import Store
from personatag.store.types import to_micros

F32 = npt.NDArray[np.float32]
Predicate = Callable[[Mapping[str, Any]], bool]

# Pseudo-reads of the personas' reading mixed into a contact's own coverage.
COVERAGE_PRIOR_READS = 4.0
# Coverage facets and the exponent of each one's lift (series overlaps the others).
FACETS = (("series", 0.5), ("sector", 1.0), ("asset", 1.0), ("region", 1.0))
BATCH = 512
# Reads whose popularity weight is computed at once (float64 temporaries: 8 bytes each).
WEIGHT_PART = 1 << 20
# Contacts whose coverage counts are computed at once.
CONTACT_PART = 1 << 18
_PRED_CACHE_MAX = 4096


@dataclass(frozen=True)
class Item:
    publication_pk: int
    score: float
    reason: str


@dataclass(frozen=True)
class Rules:
    """One persona's content rules (built by the serving side)."""

    persona_key: str
    persona_name: str
    boosts: tuple[tuple[Predicate, float], ...] = ()
    filters: tuple[Predicate, ...] = ()
    pins: tuple[tuple[int, datetime | None], ...] = ()
    cap_per_series: int | None = None


FRESH_BUCKET_DAYS = 0.25
FRESH_MAX_DAYS = 365.0
FRESH_MIN_READS = 1_000  # fewer first reads than this: the half-life curve instead
FRESH_MIN_REPORTS = 5  # an age bucket judged on fewer reports is not trusted


def learned_freshness(
    snap: Snapshot,
    horizon_days: float,
    *,
    min_reads: int = FRESH_MIN_READS,
    min_reports: int = FRESH_MIN_REPORTS,
) -> F32 | None:
    """How much a report of each age (buckets of FRESH_BUCKET_DAYS) is read next.

    From the first reads in the snapshot: for each age bucket, the first reads
    that came at that age per report old enough to have been read at that age
    (a report published 10 days ago says nothing about day 20, so it is left
    out of both counts), averaged over the next `horizon_days`, scaled to a
    largest value of 1. None when there are too few reads to learn from.
    """
    n_buckets = int(FRESH_MAX_DAYS / FRESH_BUCKET_DAYS)
    pub_age = (snap.as_of_us - snap.pub_published_us) / DAY_US
    # Only count a read in bucket b if its report has been out for all of b.
    exposed_for = np.floor(pub_age / FRESH_BUCKET_DAYS).astype(np.int64)
    counts = np.zeros(n_buckets, np.int64)
    for lo in range(0, snap.reads.nnz, WEIGHT_PART):  # by ranges: temporaries of a range
        cols = snap.reads.indices[lo : lo + WEIGHT_PART]
        read_age = (
            snap.read_first_us[lo : lo + WEIGHT_PART] - snap.pub_published_us[cols]
        ) / DAY_US
        bucket = np.floor(read_age / FRESH_BUCKET_DAYS).astype(np.int64)
        use = (bucket >= 0) & (bucket < n_buckets) & (bucket < exposed_for[cols])
        counts += np.bincount(bucket[use], minlength=n_buckets)[:n_buckets]
    if int(counts.sum()) < min_reads:
        return None
    reads = counts.astype(np.float64)
    ends = (np.arange(n_buckets) + 1) * FRESH_BUCKET_DAYS
    exposed = len(pub_age) - np.searchsorted(np.sort(pub_age), ends, side="left")
    rate = np.where(exposed >= min_reports, reads / np.maximum(exposed, 1), 0.0)
    width = max(1, round(horizon_days / FRESH_BUCKET_DAYS))
    ahead = np.concatenate([np.cumsum(rate[::-1])[::-1], [0.0]])
    idx = np.arange(n_buckets)
    curve = (ahead[idx] - ahead[np.minimum(idx + width, n_buckets)]) / width
    top = float(curve.max())
    if top <= 0:
        return None
    scaled: F32 = (curve / top).astype(np.float32)
    return scaled


def _row_max_normalise(m: F32) -> F32:
    if m.size == 0:  # an empty catalogue (or no contacts): nothing to scale
        return m
    top = m.max(axis=1, keepdims=True)
    np.divide(m, top, out=m, where=top > 0)
    return m


# The item-kNN fit (`bm25_item_knn`): contacts are taken a part at a time so that
# a part's co-read pairs number at most KNN_PART_PAIRS, and reports a block at a
# time so that a block's rows of the item x item sums take at most KNN_BLOCK_BYTES.
KNN_PART_PAIRS = 500_000
KNN_BLOCK_BYTES = 64 << 20
BM25_K1 = 1.2
BM25_B = 0.75


def bm25_item_knn(
    x: sp.csr_matrix,
    k: int,
    *,
    part_pairs: int | None = None,
    block_bytes: int | None = None,
) -> sp.csr_matrix:
    """The BM25-weighted item kNN of `x` (contacts x reports), fitted part by part.

    The same matrix as implicit's `BM25Recommender(K=k).fit(x).similarity` cast
    to float32 with the diagonal and zeros removed, bit for bit: the same BM25
    weights (same expressions, same dtypes), each pair's sum added in float64
    in the same order (contacts ascending; `np.add.at` adds in the order given
    and carries on from the previous part's sums), the same k largest per row
    including the diagonal, and at a tie on the k-th place the same choice
    (`_topk_as_implicit`). What differs is memory: implicit holds the weighted
    reads three times over (coo, csr and its transpose, float64: ~40 bytes a
    read at its peak); this holds one part's co-read pairs and one block of
    the report x report sums.
    """
    part_pairs = KNN_PART_PAIRS if part_pairs is None else part_pairs
    block_bytes = KNN_BLOCK_BYTES if block_bytes is None else block_bytes
    if not x.has_sorted_indices:
        x = x.sorted_indices()
    n_c, n_p = x.shape
    if x.nnz == 0 or k <= 0:
        return sp.csr_matrix((n_p, n_p), dtype=np.float32)
    # BM25 as implicit.nearest_neighbours.bm25_weight(x.T): reports are the
    # documents, contacts the terms.
    row_sums = np.asarray(x.sum(axis=0)).ravel()
    length_norm = (1.0 - BM25_B) + BM25_B * row_sums / row_sums.mean()
    per_contact = np.diff(x.indptr)
    idf = np.log(float(n_p)) - np.log1p(per_contact)

    block = max(1, min(n_p, block_bytes // (8 * n_p)))
    # Contact parts: bounds of rows whose co-read pairs (n per contact, squared) fit a part.
    pairs_upto = np.concatenate([[0], np.cumsum(per_contact.astype(np.int64) ** 2)])
    bounds = [0]
    while bounds[-1] < n_c:
        start = bounds[-1]
        end = int(np.searchsorted(pairs_upto, pairs_upto[start] + part_pairs, side="right")) - 1
        bounds.append(min(n_c, max(end, start + 1)))
    out_rows: list[npt.NDArray[np.int64]] = []
    out_cols: list[npt.NDArray[np.int64]] = []
    out_vals: list[npt.NDArray[np.float64]] = []
    for i0 in range(0, n_p, block):
        i1 = min(n_p, i0 + block)
        sums = np.zeros((i1 - i0) * n_p, np.float64)
        touched = np.zeros((i1 - i0) * n_p, np.bool_)
        for r0, r1 in itertools.pairwise(bounds):
            lo, hi = int(x.indptr[r0]), int(x.indptr[r1])
            if lo == hi:
                continue
            cols = x.indices[lo:hi].astype(np.int64)
            lens = per_contact[r0:r1].astype(np.int64)
            row_of = np.repeat(np.arange(r0, r1), lens)
            d = x.data[lo:hi]
            w = d * (BM25_K1 + 1.0) / (BM25_K1 * length_norm[cols] + d) * idf[row_of]
            # Each entry in the block paired with every entry of its contact's row.
            here = np.flatnonzero((cols >= i0) & (cols < i1))
            if not len(here):
                continue
            n_each = lens[row_of[here] - r0]
            first = (x.indptr[row_of[here]] - lo).astype(np.int64)
            e = np.repeat(here, n_each)
            f = np.repeat(first - np.cumsum(n_each) + n_each, n_each) + np.arange(len(e))
            flat = (cols[e] - i0) * n_p + cols[f]
            np.add.at(sums, flat, w[e] * w[f])
            touched[flat] = True
            del cols, row_of, d, w, here, n_each, first, e, f, flat
        r, c, v = _topk_as_implicit(x, sums.reshape(-1, n_p), touched.reshape(-1, n_p), i0, k)
        out_rows.append(r)
        out_cols.append(c)
        out_vals.append(v)
        del sums, touched
    rows = np.concatenate(out_rows)
    cols_ = np.concatenate(out_cols)
    vals = np.concatenate(out_vals).astype(np.float32)
    keep = (rows != cols_) & (vals != 0)
    sim = sp.csr_matrix((vals[keep], (rows[keep], cols_[keep])), shape=(n_p, n_p))
    sim.sort_indices()
    return sim


def _topk_as_implicit(
    x: sp.csr_matrix,
    sums: npt.NDArray[np.float64],
    touched: npt.NDArray[np.bool_],
    i0: int,
    k: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The k largest touched sums of each row (rows i0...), as implicit's TopK keeps them.

    Where the k-th largest value ties with one left out, the choice depends on the
    order implicit visits a row's columns (the reverse of the order they were
    first reached: the row's contacts ascending, each one's reports ascending)
    and on its heap: that (rare) row is replayed exactly, in Python.
    """
    n_rows, n_p = sums.shape
    vals = np.where(touched, sums, -np.inf)
    n_touched = touched.sum(axis=1)
    if k < n_p:
        pick = np.argpartition(-vals, k - 1, axis=1)[:, :k]
    else:
        pick = np.broadcast_to(np.arange(n_p), (n_rows, n_p))
    picked = np.take_along_axis(vals, pick, axis=1)
    rows_out, cols_out, vals_out = [], [], []
    kth = picked.min(axis=1)
    n_ge = (vals >= kth[:, None]).sum(axis=1)
    for r in range(n_rows):
        m = int(min(k, n_touched[r]))
        if m == 0:
            continue
        if n_ge[r] > k and n_touched[r] > k:  # a tie on the k-th place
            cols_r = _replay_topk(x, vals[r], i0 + r, k)
        else:
            cols_r = pick[r][np.isfinite(picked[r])]
        rows_out.append(np.full(len(cols_r), i0 + r, np.int64))
        cols_out.append(np.asarray(cols_r, np.int64))
        vals_out.append(sums[r, cols_r])
    if not rows_out:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)
    return np.concatenate(rows_out), np.concatenate(cols_out), np.concatenate(vals_out)


def _replay_topk(x: sp.csr_matrix, vals: npt.NDArray[np.float64], item: int, k: int) -> list[int]:
    import heapq

    readers = np.flatnonzero(x.indices == item)
    contacts = np.searchsorted(x.indptr, readers, side="right") - 1
    reached = np.concatenate([x.indices[x.indptr[u] : x.indptr[u + 1]] for u in np.sort(contacts)])
    _, first = np.unique(reached, return_index=True)
    order = reached[np.sort(first)][::-1]
    heap: list[tuple[float, int]] = []
    for j in order.tolist():
        score = float(vals[j])
        if len(heap) < k or score > heap[0][0]:
            if len(heap) >= k:
                heapq.heappop(heap)
            heapq.heappush(heap, (score, j))
    return [j for _, j in heap]


class FeedModel:
    """Everything `recommend` needs, precomputed from the store up to `as_of`."""

    def __init__(self, snap: Snapshot, settings: Settings) -> None:
        self._setup(snap, settings)
        s = settings
        n_pub = snap.n_pubs
        x = snap.reads  # contacts x reports, 1.0 per (contact, report) read

        # Popularity: reads in the window, weighted by their decay, per member.
        # By ranges of reads, so the float64 temporaries are a range's, not every read's.
        w = np.empty(x.nnz, np.float32)
        for lo in range(0, x.nnz, WEIGHT_PART):
            age = (snap.as_of_us - snap.read_last_us[lo : lo + WEIGHT_PART]) / DAY_US
            w[lo : lo + WEIGHT_PART] = np.where(
                age <= s.feed_popularity_days, 0.5 ** (age / s.feed_popularity_half_life_days), 0.0
            )
        decayed = sp.csr_matrix((w, x.indices, x.indptr), shape=x.shape)
        mt = snap.members.T.tocsr()  # personas x contacts
        sizes = np.asarray(snap.members.sum(axis=0)).ravel().astype(np.float32)
        pop = np.asarray((mt @ decayed).todense(), dtype=np.float32)
        self.persona_rate: F32 = (pop / np.maximum(sizes, 1.0)[:, None]).astype(np.float32)
        self.global_rate: F32 = np.asarray(decayed.sum(axis=0), dtype=np.float32).ravel() / max(
            x.shape[0], 1
        )
        del decayed, w  # 4 bytes a read: not kept through the fits below

        # Coverage: per facet (one-hots from _setup), the catalogue's share of
        # each value, and each persona's (and everyone's) reading over values.
        self.base_share: list[F32] = []
        self.persona_mix: list[F32] = []
        self.global_mix: list[F32] = []
        for onehot, codes, _ in self.onehots:
            n_val = onehot.shape[1]
            share = np.bincount(codes, minlength=n_val).astype(np.float32) / max(n_pub, 1)
            self.base_share.append(np.maximum(share, 1e-6))
            # Reads per (contact, value), by ranges of contacts: the counts are
            # integers, summed exactly in float64 (so by ranges or not, the same).
            mix64 = np.zeros((mt.shape[0], n_val), np.float64)
            total64 = np.zeros(n_val, np.float64)
            for r0 in range(0, x.shape[0], CONTACT_PART):
                per_contact = x[r0 : r0 + CONTACT_PART] @ onehot
                held = snap.members[r0 : r0 + CONTACT_PART].T.tocsr()
                mix64 += (held @ per_contact).toarray()
                total64 += np.asarray(per_contact.sum(axis=0), dtype=np.float64).ravel()
            mix = mix64.astype(np.float32)
            self.persona_mix.append(mix / np.maximum(mix.sum(axis=1, keepdims=True), 1e-9))
            total = total64.astype(np.float32)
            self.global_mix.append(total / max(float(total.sum()), 1e-9))

        # Reports share few combinations of facet values: coverage is computed per
        # combination and then spread to the reports (one gather, not one per facet).
        if self.onehots:
            stacked = np.stack([codes for _, codes, _ in self.onehots])
            combos, of_pub = np.unique(stacked, axis=1, return_inverse=True)
        else:
            combos, of_pub = np.zeros((0, 1), np.int64), np.zeros(n_pub, np.int64)
        self.facet_combos: npt.NDArray[np.int64] = combos  # facets x combinations
        self.combo_of_pub: npt.NDArray[np.int64] = np.asarray(of_pub).ravel()

        # Item-to-item similarity from readership (BM25-weighted item kNN), fitted
        # part by part (the same matrix as implicit's fit, in far less memory).
        sim = bm25_item_knn(x, int(s.feed_neighbours))
        self.similarity: sp.csr_matrix = sim
        self.fresh_curve: F32 | None = (
            learned_freshness(snap, s.feed_fresh_horizon_days)
            if s.feed_freshness == "learned"
            else None
        )

    def _setup(self, snap: Snapshot, settings: Settings) -> None:
        """What follows from the snapshot and settings alone (cheap, not saved)."""
        self.snap = snap
        self.settings = settings
        self.as_of = snap.as_of
        self.w_persona = settings.feed_weight_persona
        self.w_coverage = settings.feed_weight_coverage
        self.w_similar = settings.feed_weight_similar
        self.w_fresh = min(1.0, settings.feed_weight_fresh)
        n_pub = snap.n_pubs
        # Per facet a one-hot (reports x values), with the codes and the lift's exponent.
        self.onehots: list[tuple[sp.csr_matrix, npt.NDArray[np.int64], float]] = []
        for name, exponent in FACETS:
            codes = snap.facet(name)
            n_val = int(codes.max()) + 1 if len(codes) else 1
            onehot = sp.csr_matrix(
                (np.ones(n_pub, np.float32), (np.arange(n_pub), codes)), shape=(n_pub, n_val)
            )
            self.onehots.append((onehot, codes, exponent))
        self._pred_cache: dict[Predicate, npt.NDArray[np.bool_]] = {}
        self._first_read = snap.first_read_matrix()

    @classmethod
    def from_parts(cls, snap: Snapshot, settings: Settings, parts: Mapping[str, Any]) -> FeedModel:
        """A model from the arrays a build computed (`recommend.saved` keeps them on
        disk): the same answers as the model they came from, with no build."""
        model = cls.__new__(cls)
        model._setup(snap, settings)
        model.persona_rate = parts["persona_rate"]
        model.global_rate = parts["global_rate"]
        model.base_share = list(parts["base_share"])
        model.persona_mix = list(parts["persona_mix"])
        model.global_mix = list(parts["global_mix"])
        model.facet_combos = parts["facet_combos"]
        model.combo_of_pub = parts["combo_of_pub"]
        model.similarity = parts["similarity"]
        model.fresh_curve = parts["fresh_curve"]
        return model

    @classmethod
    def build(cls, store: Store, as_of: datetime, settings: Settings | None = None) -> FeedModel:
        """Precompute from reads at or before `as_of` and reports published before it."""
        started = time.monotonic()
        model = cls(load_snapshot(store, as_of), settings or Settings())
        model.build_seconds = time.monotonic() - started
        return model

    build_seconds: float = 0.0

    # -- scoring ---------------------------------------------------------------

    def _as_of_us(self, as_of: datetime | None) -> int:
        if as_of is None:
            return self.snap.as_of_us
        us = to_micros(as_of)
        if us > self.snap.as_of_us:
            raise InputError(
                f"as_of {as_of.isoformat()} is later than the model's "
                f"{self.as_of.isoformat()}: build the model again at the later time"
            )
        return us

    def eligible(self, rows: npt.NDArray[np.int64], as_of_us: int) -> npt.NDArray[np.bool_]:
        """(rows x reports): published before as_of and not read at or before it."""
        snap = self.snap
        n = len(rows)
        known = rows >= 0
        eligible = np.broadcast_to(snap.pub_published_us < as_of_us, (n, snap.n_pubs)).copy()
        fb = self._first_read[np.where(known, rows, 0)]
        per_row = np.diff(fb.indptr)
        seen = (fb.data <= as_of_us) & np.repeat(known, per_row)
        eligible[np.repeat(np.arange(n), per_row)[seen], fb.indices[seen]] = False
        return eligible

    def scores(
        self, contact_pks: Sequence[int], *, as_of: datetime | None = None
    ) -> npt.NDArray[np.float32]:
        """The blend without rules (contacts x reports in `snap.pub_pk` order); -inf: ineligible."""
        rows = self.snap.contact_rows(contact_pks)
        pop, cov, sim, fresh, eligible = self._components(
            rows, self._held_matrix(rows, None), self._as_of_us(as_of)
        )
        score: F32 = (self.w_persona * pop + self.w_coverage * cov + self.w_similar * sim) * (
            1.0 - self.w_fresh + self.w_fresh * fresh
        )
        score[~eligible] = -np.inf
        return score

    def _components(
        self, rows: npt.NDArray[np.int64], held: sp.csr_matrix, as_of_us: int
    ) -> tuple[F32, F32, F32, F32, npt.NDArray[np.bool_]]:
        """(P, C, S, F, eligible) for a batch: rows into the snapshot (-1: unknown contact)."""
        snap = self.snap
        n = len(rows)
        known = rows >= 0
        xb = snap.reads[np.where(known, rows, 0)]
        if not known.all():
            xb = sp.diags(known.astype(np.float32)) @ xb
        xb = sp.csr_matrix(xb)
        eligible = self.eligible(rows, as_of_us)
        n_held = np.asarray(held.sum(axis=1)).ravel()
        avg = sp.diags(1.0 / np.maximum(n_held, 1)).astype(np.float32) @ held
        pop = np.asarray(avg @ self.persona_rate, dtype=np.float32)
        none = n_held == 0
        if none.any():
            pop[none] = self.global_rate

        by_combo = np.ones((n, self.facet_combos.shape[1]), dtype=np.float32)
        for f, (onehot, _, exponent) in enumerate(self.onehots):
            counts = np.asarray((xb @ onehot).todense(), dtype=np.float32)
            prior = np.asarray(avg @ self.persona_mix[f], dtype=np.float32)
            if none.any():
                prior[none] = self.global_mix[f]
            mix = (counts + COVERAGE_PRIOR_READS * prior) / (
                counts.sum(axis=1, keepdims=True) + COVERAGE_PRIOR_READS
            )
            lift = (mix / self.base_share[f])[:, self.facet_combos[f]]
            by_combo *= lift**exponent if exponent != 1.0 else lift
        cov = by_combo[:, self.combo_of_pub]

        sim = np.asarray((xb @ self.similarity).todense(), dtype=np.float32)
        age_days = np.maximum(as_of_us - snap.pub_published_us, 0) / DAY_US
        fresh = self.freshness(age_days)
        ineligible = ~eligible
        for m in (pop, cov, sim):
            np.copyto(m, 0.0, where=ineligible)
            _row_max_normalise(m)
        return pop, cov, sim, fresh, eligible

    def freshness(self, age_days: npt.NDArray[np.float64]) -> F32:
        """F per report: the learned curve when there is one, else the half-life."""
        curve = self.fresh_curve
        if curve is None:
            return (0.5 ** (age_days / self.settings.feed_half_life_days)).astype(np.float32)
        at = np.minimum((age_days / FRESH_BUCKET_DAYS).astype(np.int64), len(curve) - 1)
        return curve[at]

    def _mask(self, predicate: Predicate) -> npt.NDArray[np.bool_]:
        mask = self._pred_cache.get(predicate)
        if mask is None:
            mask = np.fromiter(
                (bool(predicate(row)) for row in self.snap.pub_rows), bool, self.snap.n_pubs
            )
            if len(self._pred_cache) >= _PRED_CACHE_MAX:
                self._pred_cache.clear()
            self._pred_cache[predicate] = mask
        return mask

    def _held_matrix(
        self, rows: npt.NDArray[np.int64], held: Sequence[Sequence[str]] | None
    ) -> sp.csr_matrix:
        snap = self.snap
        if held is None:
            known = rows >= 0
            m = snap.members[np.where(known, rows, 0)]
            return sp.csr_matrix(sp.diags(known.astype(np.float32)) @ m)
        r, c = [], []
        for i, keys in enumerate(held):
            for key in keys:
                j = snap.persona_index.get(key)
                if j is not None:
                    r.append(i)
                    c.append(j)
        return sp.csr_matrix(
            (np.ones(len(r), np.float32), (r, c)), shape=(len(rows), len(snap.persona_keys))
        )

    def _rank(
        self,
        contact_pks: Sequence[int],
        k: int,
        as_of: datetime | None,
        rules: Mapping[str, Rules] | None,
        held: Sequence[Sequence[str]] | None,
    ) -> list[list[Item]]:
        snap = self.snap
        as_of_us = self._as_of_us(as_of)
        rows = snap.contact_rows(contact_pks)
        held_m = self._held_matrix(rows, held)
        pop, cov, sim, fresh, eligible = self._components(rows, held_m, as_of_us)
        pop *= self.w_persona
        cov *= self.w_coverage
        sim *= self.w_similar
        parts = (pop, cov, sim)  # each batch x reports, weighted
        score = pop + cov
        score += sim
        score *= 1.0 - self.w_fresh + self.w_fresh * fresh
        held_keys: list[list[str]] = [
            [snap.persona_keys[j] for j in held_m.indices[held_m.indptr[i] : held_m.indptr[i + 1]]]
            for i in range(len(rows))
        ]
        caps: list[int | None] = [None] * len(rows)
        pins: list[list[tuple[int, str]]] = [[] for _ in rows]
        if rules:
            for key, rule in rules.items():
                holders = [i for i, keys in enumerate(held_keys) if key in keys]
                if not holders:
                    continue
                for pred, weight in rule.boosts:
                    score[holders] += np.float32(weight) * self._mask(pred)
                for pred in rule.filters:
                    eligible[holders] &= self._mask(pred)
                live = [
                    p for p, expires in rule.pins
                    if expires is None or to_micros(expires) > as_of_us
                ]  # fmt: skip
                for i in holders:
                    pins[i].extend((pk, rule.persona_name) for pk in live)
                    cap, new = caps[i], rule.cap_per_series
                    if new is not None:
                        caps[i] = new if cap is None else min(cap, new)
        np.copyto(score, -np.inf, where=~eligible)
        out = []
        for i in range(len(rows)):
            out.append(self._pick(i, rows[i], score[i], parts, eligible[i], k, caps[i],
                                  pins[i], held_m))  # fmt: skip
        return out

    def _pick(
        self,
        i: int,
        row: int,
        score: F32,
        parts: tuple[F32, F32, F32],
        eligible: npt.NDArray[np.bool_],
        k: int,
        cap: int | None,
        pins: list[tuple[int, str]],
        held_m: sp.csr_matrix,
    ) -> list[Item]:
        """Pins first, then the best eligible reports, at most `cap` of one series."""
        snap = self.snap
        chosen: list[Item] = []
        taken: set[int] = set()
        per_series: dict[int, int] = {}
        read_facets: list[tuple[set[int], set[int]]] = []  # the contact's, once needed

        def consider(j: int, reason: str | None) -> None:
            s = int(snap.pub_series[j])
            if j in taken or not eligible[j] or (cap is not None and per_series.get(s, 0) >= cap):
                return
            if reason is None:
                shares = (float(parts[0][i, j]), float(parts[1][i, j]), float(parts[2][i, j]))
                reason = self._reason(i, row, j, shares, held_m, read_facets)
            chosen.append(Item(int(snap.pub_pk[j]), float(score[j]), reason))
            taken.add(j)
            per_series[s] = per_series.get(s, 0) + 1

        for pk, persona_name in pins:
            j = snap.pub_index(pk)
            if j is not None and len(chosen) < k:
                consider(j, f"pinned for {persona_name}")
        n_ok = int(eligible.sum())
        # Ties break by catalogue position, so a longer list extends a shorter one.
        want = min(n_ok, k + len(taken) if cap is None else 4 * k + len(taken))
        done = 0
        while len(chosen) < k and done < n_ok:
            top = np.argpartition(-score, want - 1)[:want] if want < len(score) else None
            order = (
                np.lexsort((np.arange(len(score)), -score))
                if top is None
                else top[np.lexsort((top, -score[top]))]
            )
            for j in order[done:want].tolist():
                if len(chosen) >= k:
                    break
                consider(j, None)
            done = want
            want = n_ok
        return chosen

    def _reason(
        self,
        i: int,
        row: int,
        j: int,
        parts: tuple[float, float, float],
        held_m: sp.csr_matrix,
        read_facets: list[tuple[set[int], set[int]]],
    ) -> str:
        snap = self.snap
        series = snap.series_names[int(snap.pub_series[j])]
        part = max(range(3), key=parts.__getitem__)  # the first largest, as argmax
        if parts[part] <= 0:
            return f"new in {series}"
        if part == 0:
            held_idx = held_m.indices[held_m.indptr[i] : held_m.indptr[i + 1]]
            if len(held_idx) == 0:
                return "popular with readers this week"
            best = int(held_idx[int(np.argmax(self.persona_rate[held_idx, j]))])
            return f"popular with {snap.persona_names[best]}"
        if part == 1 and row >= 0:
            if not read_facets:  # the series and sectors the contact read, once per contact
                read = snap.reads.indices[snap.reads.indptr[row] : snap.reads.indptr[row + 1]]
                read_facets.append(
                    (set(snap.pub_series[read].tolist()), set(snap.pub_sector[read].tolist()))
                )
            series_read, sectors_read = read_facets[0]
            if int(snap.pub_series[j]) in series_read:
                return f"new in {series}, which you read"
            sector = snap.pub_sector_name(j)
            if sector and int(snap.pub_sector[j]) in sectors_read:
                return f"new in {sector}, which you read"
            return f"new in {series}, close to what you read"
        if part == 2 and row >= 0:
            read = snap.reads.indices[snap.reads.indptr[row] : snap.reads.indptr[row + 1]]
            col = self.similarity[read][:, [j]].toarray().ravel()
            if len(col) and col.max() > 0:
                title = snap.pub_titles[int(read[int(np.argmax(col))])]
                return f"readers of {title} also read this"
        return f"new in {series}"

    # -- public ------------------------------------------------------------------

    def recommend(
        self,
        contact_pk: int,
        k: int = 10,
        *,
        as_of: datetime | None = None,
        rules: Mapping[str, Rules] | None = None,
        held: Sequence[str] | None = None,
    ) -> list[Item]:
        """The contact's top `k` eligible reports, best first (pins of held personas first).

        `as_of` defaults to the model's and may not be later; `held` defaults to the
        contact's personas in the model's snapshot; `rules` apply for held personas.
        """
        return self._rank([contact_pk], k, as_of, rules, None if held is None else [held])[0]

    def recommend_many(
        self,
        contact_pks: Sequence[int],
        k: int = 10,
        *,
        as_of: datetime | None = None,
        rules: Mapping[str, Rules] | None = None,
        held: Mapping[int, Sequence[str]] | None = None,
        batch: int = BATCH,
    ) -> dict[int, list[Item]]:
        """`recommend` for many contacts, computed `batch` at a time."""
        out: dict[int, list[Item]] = {}
        pks = list(contact_pks)
        for start in range(0, len(pks), batch):
            part = pks[start : start + batch]
            part_held = None if held is None else [held.get(pk, ()) for pk in part]
            for pk, items in zip(part, self._rank(part, k, as_of, rules, part_held), strict=True):
                out[pk] = items
        return out

    def recommend_all(
        self,
        contact_pks: Sequence[int],
        k: int = 10,
        *,
        as_of: datetime | None = None,
        rules: Mapping[str, Rules] | None = None,
        workers: int | None = None,
        batch: int = BATCH,
    ) -> dict[int, list[Item]]:
        """`recommend_many` spread over `workers` forked processes (default: one per
        CPU): for precomputing everyone's feed. The children share this model
        copy-on-write; only the chosen items come back. Falls back to one process
        where fork is unavailable or the work is small."""
        import multiprocessing as mp
        import os

        pks = list(contact_pks)
        n = workers or os.cpu_count() or 1
        if n <= 1 or len(pks) < 4 * batch or "fork" not in mp.get_all_start_methods():
            return self.recommend_many(pks, k, as_of=as_of, rules=rules, batch=batch)
        global _FORKED
        _FORKED = (self, k, as_of, rules, batch)
        size = max(batch, -(-len(pks) // (n * 8)))  # a few chunks per worker evens the load
        chunks = [pks[i : i + size] for i in range(0, len(pks), size)]
        out: dict[int, list[Item]] = {}
        try:
            with mp.get_context("fork").Pool(n) as pool:
                for part in pool.imap_unordered(_rank_forked, chunks):
                    out.update(part)
        finally:
            _FORKED = None
        return out


# What forked workers of recommend_all rank with (set only while they run).
_FORKED: tuple[FeedModel, int, datetime | None, Mapping[str, Rules] | None, int] | None = None


def _rank_forked(pks: list[int]) -> dict[int, list[Item]]:
    if _FORKED is None:  # pragma: no cover - only reached in a forked worker
        raise RuntimeError("recommend_all worker without a model")
    model, k, as_of, rules, batch = _FORKED
    return model.recommend_many(pks, k, as_of=as_of, rules=rules, batch=batch)


__all__ = ["FeedModel", "Item", "Rules"]
