"""Baselines the feed model is compared with, each a few lines over the same snapshot.

Every scorer returns (contacts x reports) scores in the snapshot's report order
with -inf for ineligible reports, like `FeedModel.scores`. Ties (and contacts a
baseline knows nothing about) are broken by a tiny share of global popularity,
then by recency, so no baseline ranks at random.

B0 editions replay: the old site's fixed editions, one per (home region, investor
   or corporate): the newest reports of the edition's regions and asset classes.
B1 time-decayed global popularity.
B2 popularity within the contact's personas (B1 for a contact without personas).
B3 latest from your coverage: the newest reports in the series the contact reads.
B4 item-kNN alone (BM25 item-item similarity from readership).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from personatag.recommend.model import FeedModel
from personatag.recommend.snapshot import DAY_US

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Scorer = Callable[[FeedModel, Sequence[int], int], F32]

# B0: what each edition covers (asset classes) besides its home region and Global.
CORPORATE_ASSETS = ("Rates", "FX", "Macro", "Credit", "Commodities")
TIE = np.float32(1e-4)


def _finish(model: FeedModel, rows: I64, as_of_us: int, score: F32) -> F32:
    snap = model.snap
    age = np.maximum(as_of_us - snap.pub_published_us, 0) / DAY_US
    tie = model.global_rate / max(float(model.global_rate.max()), 1e-12)
    score = score + TIE * tie + TIE * TIE * np.exp(-age / 365.0).astype(np.float32)
    score[~model.eligible(rows, as_of_us)] = -np.inf
    return score.astype(np.float32)


def _recency(model: FeedModel, as_of_us: int) -> F32:
    age = np.maximum(as_of_us - model.snap.pub_published_us, 0) / DAY_US
    return (1.0 / (1.0 + age)).astype(np.float32)


def _contact_attributes(model: FeedModel, rows: I64) -> tuple[list[str | None], list[bool]]:
    """Home region and 'is a corporate' per row, from the snapshot's personas."""
    snap = model.snap
    regions: list[str | None] = []
    corporate: list[bool] = []
    for r in rows.tolist():
        keys: list[str] = []
        if r >= 0:
            m = snap.members
            keys = [snap.persona_keys[j] for j in m.indices[m.indptr[r] : m.indptr[r + 1]]]
        region = next((k.split("-", 1)[1] for k in keys if k.startswith("region-")), None)
        regions.append(region.upper() if region else None)
        corporate.append("firm-corporate" in keys)
    return regions, corporate


def b0_editions(model: FeedModel, contact_pks: Sequence[int], as_of_us: int) -> F32:
    """The newest reports of the contact's edition (region x investor/corporate)."""
    snap = model.snap
    rows = snap.contact_rows(contact_pks)
    regions, corporate = _contact_attributes(model, rows)
    pub_region = np.array([r["region"] for r in snap.pub_rows], dtype=object)
    pub_asset = np.array([r["asset_class"] for r in snap.pub_rows], dtype=object)
    recency = _recency(model, as_of_us)
    in_corp = np.isin(pub_asset, CORPORATE_ASSETS)
    cache: dict[tuple[str | None, bool], F32] = {}
    score = np.empty((len(rows), snap.n_pubs), dtype=np.float32)
    for i, edition in enumerate(zip(regions, corporate, strict=True)):
        if edition not in cache:
            region, corp = edition
            mine = (pub_region == "Global") | (pub_region == region) | (region is None)
            if corp:
                mine &= in_corp
            cache[edition] = (mine.astype(np.float32) + recency).astype(np.float32)
        score[i] = cache[edition]
    return _finish(model, rows, as_of_us, score)


def b1_popular(model: FeedModel, contact_pks: Sequence[int], as_of_us: int) -> F32:
    rows = model.snap.contact_rows(contact_pks)
    score = np.broadcast_to(model.global_rate, (len(rows), model.snap.n_pubs)).copy()
    return _finish(model, rows, as_of_us, score)


def b2_persona_popular(model: FeedModel, contact_pks: Sequence[int], as_of_us: int) -> F32:
    snap = model.snap
    rows = snap.contact_rows(contact_pks)
    held = snap.members[np.where(rows >= 0, rows, 0)]
    held = sp.csr_matrix(sp.diags((rows >= 0).astype(np.float32)) @ held)
    n_held = np.asarray(held.sum(axis=1)).ravel()
    avg = sp.diags(1.0 / np.maximum(n_held, 1)).astype(np.float32) @ held
    score = np.asarray(avg @ model.persona_rate, dtype=np.float32)
    score[n_held == 0] = model.global_rate
    return _finish(model, rows, as_of_us, score)


def b3_coverage(model: FeedModel, contact_pks: Sequence[int], as_of_us: int) -> F32:
    snap = model.snap
    rows = snap.contact_rows(contact_pks)
    xb = snap.reads[np.where(rows >= 0, rows, 0)]
    xb = sp.csr_matrix(sp.diags((rows >= 0).astype(np.float32)) @ xb)
    n_series = int(snap.pub_series.max()) + 1 if snap.n_pubs else 1
    onehot = sp.csr_matrix(
        (np.ones(snap.n_pubs, np.float32), (np.arange(snap.n_pubs), snap.pub_series)),
        shape=(snap.n_pubs, n_series),
    )
    reads_series = np.asarray((xb @ onehot).todense()) > 0
    score = reads_series[:, snap.pub_series].astype(np.float32) + _recency(model, as_of_us)
    return _finish(model, rows, as_of_us, score)


def b4_item_knn(model: FeedModel, contact_pks: Sequence[int], as_of_us: int) -> F32:
    snap = model.snap
    rows = snap.contact_rows(contact_pks)
    xb = snap.reads[np.where(rows >= 0, rows, 0)]
    xb = sp.csr_matrix(sp.diags((rows >= 0).astype(np.float32)) @ xb)
    score = np.asarray((xb @ model.similarity).todense(), dtype=np.float32)
    top = score.max(axis=1, keepdims=True)
    np.divide(score, top, out=score, where=top > 0)
    return _finish(model, rows, as_of_us, score)


def ours(model: FeedModel, contact_pks: Sequence[int], as_of_us: int) -> F32:
    """The feed model's blend (no persona rules: they are editors' choices, not learnt)."""
    from personatag.store.types import from_micros

    return model.scores(contact_pks, as_of=from_micros(as_of_us))


BASELINES: dict[str, Scorer] = {
    "B0 editions": b0_editions,
    "B1 popular": b1_popular,
    "B2 persona popular": b2_persona_popular,
    "B3 your coverage": b3_coverage,
    "B4 item-kNN": b4_item_knn,
}
RANKERS: dict[str, Scorer] = {"ours": ours, **BASELINES}

# The rankers a feed can be asked for by key (CLI --ranker, API ?ranker=, the
# workbench): "ours" is the served blend with the persona rules; the baselines
# rank without rules, each item's reason saying what the baseline does.
BASELINE_KEYS: dict[str, tuple[str, str]] = {
    "b0": ("B0 editions", "newest in your edition (home region, investor or corporate)"),
    "b1": ("B1 popular", "popular with all readers lately"),
    "b2": ("B2 persona popular", "popular within your personas lately"),
    "b3": ("B3 your coverage", "newest in a series you read"),
    "b4": ("B4 item-kNN", "read by readers of what you read"),
}
RANKER_KEYS = ("ours", *BASELINE_KEYS)
