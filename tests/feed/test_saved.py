"""The feed model kept on disk (recommend.saved): written and mapped again it
answers exactly as built; a damaged, foreign or mismatched model is refused."""

from __future__ import annotations

import json
import mmap
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from personatag.config import Settings
from personatag.engines.columnar.copy import store_identity
from personatag.recommend import FeedModel, Rules
from personatag.recommend.baselines import BASELINES
from personatag.recommend.model import learned_freshness
from personatag.recommend.saved import MANIFEST, SavedModelRefused, open_saved, save
from personatag.store import Store
from tests.feed.test_model import PK, D, is_energy, is_tech, model  # noqa: F401
from tests.helpers import NOW

PKS = [1, 2, 3, 4, 999]
VERSIONS = (3, 5, 7)


def mapped(array: object) -> bool:
    """Whether `array` is (a view of) a memory-mapped file."""
    while array is not None:
        if isinstance(array, mmap.mmap):
            return True
        array = getattr(array, "base", None)
    return False


def saved(model: FeedModel, store: Store, folder: Path) -> FeedModel:  # noqa: F811
    sid = store_identity(store)
    save(model, folder, store_id=sid, versions_=VERSIONS, settings=model.settings)
    return open_saved(folder, sid, model.settings).model


def test_a_saved_model_answers_exactly_as_built(
    model: FeedModel,  # noqa: F811
    store: Store,
    tmp_path: Path,
) -> None:
    # A learned freshness curve (the tiny store has too few reads for one) is kept too.
    model.fresh_curve = learned_freshness(model.snap, 1.0, min_reads=1, min_reports=1)
    again = saved(model, store, tmp_path / "m")
    assert mapped(again.snap.reads.indices) and mapped(again.persona_rate)  # not loaded
    assert again.fresh_curve is not None
    np.testing.assert_array_equal(again.scores(PKS), model.scores(PKS))
    earlier = NOW - 3 * D
    np.testing.assert_array_equal(
        again.scores(PKS, as_of=earlier), model.scores(PKS, as_of=earlier)
    )
    rules = {
        "energy": Rules(
            "energy",
            "Energy Readers",
            boosts=((is_tech, 2.0),),
            filters=(is_energy,),
            pins=((PK["p7"], None),),
            cap_per_series=1,
        )
    }
    for pk in PKS:
        assert again.recommend(pk, k=20) == model.recommend(pk, k=20)
        assert again.recommend(pk, k=20, rules=rules) == model.recommend(pk, k=20, rules=rules)
        assert again.recommend(pk, as_of=earlier) == model.recommend(pk, as_of=earlier)
    assert again.recommend_many(PKS, k=3, batch=2) == model.recommend_many(PKS, k=3, batch=2)
    as_of_us = model.snap.as_of_us
    for scorer in BASELINES.values():
        np.testing.assert_array_equal(scorer(again, PKS, as_of_us), scorer(model, PKS, as_of_us))
    assert again.as_of == model.as_of
    assert again.snap.pub_rows == model.snap.pub_rows


def _truncate(path: Path) -> None:
    data = (path / "reads.indices.npy").read_bytes()
    (path / "reads.indices.npy").write_bytes(data[:-4])


def _overwrite_start(path: Path) -> None:
    with open(path / "persona_rate.npy", "r+b") as f:
        f.write(b"\x00" * 16)


def _remove(path: Path) -> None:
    (path / "contact_pk.npy").unlink()


def _edit_meta(path: Path) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta["persona_names"] = ["Someone else"]
    (path / "meta.json").write_text(json.dumps(meta))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "overwritten": _overwrite_start,
    "missing": _remove,
    "meta edited": _edit_meta,
}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_model_file_is_refused(
    model: FeedModel,  # noqa: F811
    store: Store,
    tmp_path: Path,
    how: str,
) -> None:
    folder = tmp_path / "m"
    saved(model, store, folder)
    name = json.loads((folder / MANIFEST).read_text())["model"]
    DAMAGE[how](folder / name)
    with pytest.raises(SavedModelRefused):
        open_saved(folder, store_identity(store), model.settings)


def test_a_foreign_model_or_file_is_refused(
    model: FeedModel,  # noqa: F811
    store: Store,
    tmp_path: Path,
) -> None:
    sid = store_identity(store)
    folder = tmp_path / "m"
    saved(model, store, folder)
    with pytest.raises(SavedModelRefused, match="another store"):
        open_saved(folder, sid + 1, model.settings)
    other = model.settings.model_copy(update={"feed_neighbours": 7})
    with pytest.raises(SavedModelRefused, match="settings"):
        open_saved(folder, sid, other)
    # A file of another model of the same shape (an earlier as_of) put in its place.
    earlier = FeedModel.build(store, NOW - 2 * D, Settings())
    elsewhere = tmp_path / "other"
    saved(earlier, store, elsewhere)
    mine = folder / json.loads((folder / MANIFEST).read_text())["model"]
    theirs = elsewhere / json.loads((elsewhere / MANIFEST).read_text())["model"]
    shutil.copyfile(theirs / "pub_published_us.npy", mine / "pub_published_us.npy")
    with pytest.raises(SavedModelRefused):
        open_saved(folder, sid, model.settings)
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(SavedModelRefused, match="manifest"):
        open_saved(folder, sid, model.settings)


def test_a_new_save_replaces_the_old_folder(
    model: FeedModel,  # noqa: F811
    store: Store,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "m"
    for _ in range(3):
        saved(model, store, folder)
    # The current model and the one before it (a reader may still be opening it).
    assert len([p for p in folder.iterdir() if p.is_dir()]) == 2
