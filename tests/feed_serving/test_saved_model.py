"""The feed service keeps its model on disk (recommend.saved): a new process
maps it instead of building; one it cannot trust is built again; a separate
build process hands its model over as files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from personatag.recommend import FeedModel
from personatag.recommend import service as feed_service
from personatag.recommend.saved import MANIFEST
from personatag.store import Store
from tests.feed_serving.conftest import build_world

PKS = list(range(1, 42))


def service(store: Store, folder: Path, **changes: object) -> feed_service.FeedService:
    settings = feed_service.Settings().model_copy(update=changes)
    return feed_service.FeedService(store, settings, folder=folder, keep_from_contacts=1)


def versions(store: Store) -> tuple[int, ...]:
    with store.read() as conn:
        return feed_service.data_versions(conn, store)


def answers(model: FeedModel) -> dict[int, list[object]]:
    return model.recommend_many(PKS, k=5)  # type: ignore[return-value]


def ranked(model: FeedModel) -> dict[int, list[tuple[int, str]]]:
    """The ranking (a model built a moment later differs only in scores: freshness)."""
    return {
        pk: [(i.publication_pk, i.reason) for i in items]
        for pk, items in model.recommend_many(PKS, k=5).items()
    }


def no_builds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    built: list[int] = []
    real = FeedModel.build.__func__  # type: ignore[attr-defined]

    def counting(cls: type[FeedModel], *args: object, **kwargs: object) -> FeedModel:
        built.append(1)
        return real(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(FeedModel, "build", classmethod(counting))
    return built


def test_a_new_process_maps_the_saved_model_instead_of_building(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_world(store)
    now = versions(store)
    first = service(store, tmp_path).current(now)
    assert (tmp_path / MANIFEST).exists()
    built = no_builds(monkeypatch)
    later = service(store, tmp_path)
    again = later.current(now)
    assert built == []
    assert again is not first and again.as_of == first.as_of
    assert answers(again) == answers(first)
    # A server opens it at start-up and starts no build while it is current.
    server = service(store, tmp_path)
    server.warm()
    assert server._current is not None and not server._rebuilding and built == []


def test_a_damaged_saved_model_is_built_again(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_world(store)
    now = versions(store)
    first = service(store, tmp_path).current(now)
    name = json.loads((tmp_path / MANIFEST).read_text())["model"]
    (tmp_path / name / "similarity.data.npy").write_bytes(b"not an array")
    built = no_builds(monkeypatch)
    again = service(store, tmp_path).current(now)
    assert built == [1]
    assert ranked(again) == ranked(first)
    # ... and the new model replaced the damaged one on disk.
    assert json.loads((tmp_path / MANIFEST).read_text())["model"] != name
    assert service(store, tmp_path).current(now) is not None and built == [1]


def test_a_cli_process_builds_when_the_saved_model_is_old_and_stale(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from personatag.domain import PinKind
    from personatag.memberships.pins import pin

    build_world(store)
    service(store, tmp_path).current(versions(store))
    pin(store, "energy", "c0004", PinKind.IN, actor="t")
    built = no_builds(monkeypatch)
    # Young enough: served (eligibility is read fresh by feed_for anyway).
    service(store, tmp_path).current(versions(store))
    assert built == []
    service(store, tmp_path, feed_model_max_age_s=0.0).current(versions(store))
    assert built == [1]


def test_a_separate_build_process_hands_over_files(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_world(store)
    in_process = FeedModel.build(store, feed_service.utcnow())
    monkeypatch.setattr(feed_service, "BUILD_APART_CONTACTS", 1)
    svc = service(store, tmp_path)
    svc.warm()
    deadline = time.monotonic() + 120
    while svc._current is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert svc._current is not None, "the separate-process build did not finish"
    assert svc._saved_name == json.loads((tmp_path / MANIFEST).read_text())["model"]
    got = svc._current.model
    assert got.snap.reads.indices.base is not None  # a view of the mapped file
    assert ranked(got) == ranked(in_process)


def test_a_server_picks_up_the_model_another_process_saved(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from personatag.domain import PinKind
    from personatag.memberships.pins import pin

    build_world(store)
    service(store, tmp_path).current(versions(store))
    server = service(store, tmp_path)
    server.warm()
    old = server.current(versions(store))
    pin(store, "energy", "c0004", PinKind.IN, actor="t")
    time.sleep(0.01)  # a later build time than the model the server holds
    newer = service(store, tmp_path, feed_model_max_age_s=0.0).current(versions(store))
    built = no_builds(monkeypatch)
    got = server.current(versions(store))
    assert built == [] and got is not old
    assert ranked(got) == ranked(newer)
