"""Serving feeds: one contact's feed from a process-wide cached FeedModel.

- The model of a store is built on the first request and kept. Before each
  request the data versions of reads and publications and the newest
  membership-log entry are read (one short transaction); when any changed, or
  the model is older than `feed_model_max_age_s`, it is rebuilt. A model that
  took less than `SYNC_REBUILD_S` to build is rebuilt in the request; a larger
  one in a background thread while the old one keeps serving (a 1M-contact
  model takes tens of seconds), so a request never waits for a big rebuild;
  the next background rebuild starts no sooner than `feed_model_rebuild_gap_s`
  after the last one ended (reads arrive all the time: rebuilding back to back
  would take a CPU for good).
  A background build of a big store (from `BUILD_APART_CONTACTS` contacts on a
  file or server store) runs in a separate process and only the finished model
  comes back: a build in a thread of the server would hold the interpreter
  lock for tens of seconds and stall every other request meanwhile.
- The built model is kept on disk (`recommend.saved`, under
  `<data_dir>/feed-model/`) for stores of `BUILD_APART_CONTACTS` contacts or
  more that another process can open: a new process (a restarted server, a CLI
  `feed`) maps the last saved model instead of building one, so it starts in
  seconds with a few hundred MiB resident instead of building gigabytes. A
  saved model of another store, other settings or with a damaged file is not
  trusted: it is built again. A server that opens a saved model which the data
  has moved past serves it and rebuilds in the background as above; a
  background build holds the folder's build lock, and none starts while
  another process holds it (that process's model is picked up from the
  manifest when it is published). A process that serves nothing (the CLI)
  uses a saved model whose data versions are current or that is younger than
  `feed_model_max_age_s`, and otherwise builds (and saves) one itself.
- Content rules and the contact's personas are read fresh on every request, so
  a rule change or a pin applies on the next request.
- Eligibility does not trust the model's age: the contact's reads up to as_of
  are read on every request and any read report is dropped, as is any report
  not published before as_of.
- An `as_of` earlier than the serving model's gets a model built for that time
  (the last `HISTORY_MODELS` are kept); a later one (up to now) is served by the
  current model at its own as_of, which the answer reports.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, func, select

from personatag.config import Settings
from personatag.domain import check_as_of, utcnow
from personatag.errors import InputError, NotFoundError
from personatag.recommend.baselines import BASELINE_KEYS, BASELINES, RANKER_KEYS
from personatag.recommend.explain import rules_behind
from personatag.recommend.model import FeedModel, Item
from personatag.recommend.rules import rules_for_model
from personatag.recommend.saved import (
    Saved,
    SavedModelRefused,
    build_lock,
    building_elsewhere,
    model_folder,
    open_saved,
    read_manifest,
    save,
    store_identity,
)
from personatag.store import Store, open_store, versions
from personatag.store.types import to_micros
from personatag.times import iso

log = logging.getLogger(__name__)


class BuildStopped(RuntimeError):
    """The build process was stopped by a signal from outside (the server is
    shutting down with its process group): not a failure of the build."""


MAX_K = 100
# Models that build faster than this are rebuilt inside the request that finds them stale.
SYNC_REBUILD_S = 2.0
HISTORY_MODELS = 2
# A request's as_of may be this much ahead of the server's clock (client clock skew).
FUTURE_SLACK = timedelta(seconds=5)
VERSIONED = ("publications", "reads")


# Seconds a request waits for a start-up build before building on its own.
WARM_WAIT_S = 600.0
# From this many contacts a background build runs in a separate process.
BUILD_APART_CONTACTS = 100_000


@dataclass(frozen=True)
class _Cached:
    model: FeedModel
    versions: tuple[int, ...]
    built: float  # time.monotonic() when the build finished


def data_versions(conn: Connection, store: Store) -> tuple[int, ...]:
    """What a model depends on: reads, publications and memberships (every
    membership change is logged, so the newest log entry stands for them)."""
    found = versions.current(conn, store.tables, VERSIONED)
    log_seq = conn.scalar(select(func.max(store.tables.membership_log.c.seq)))
    return (*(found[n] for n in VERSIONED), int(log_seq or 0))


def _cached_from(saved: Any) -> _Cached:
    """A saved model as a cache entry, its age counted from when it was built."""
    age = max(0.0, time.time() - saved.built_at)
    return _Cached(saved.model, saved.versions, time.monotonic() - age)


class FeedService:
    """The models serving one store in this process (thread-safe).

    `folder`: where the built model is kept (recommend.saved), None to keep it
    in memory only; it is kept there for stores of `keep_from_contacts`
    contacts or more (smaller ones build in well under a second)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        folder: Path | None = None,
        keep_from_contacts: int = BUILD_APART_CONTACTS,
    ) -> None:
        self.store = store
        self.settings = settings
        self.folder = folder
        self.keep_from_contacts = keep_from_contacts
        self._lock = threading.Lock()  # one build at a time
        self._current: _Cached | None = None
        self._history: OrderedDict[datetime, _Cached] = OrderedDict()
        self._rebuilding = False
        self._serving = False  # set by warm(): a server, which rebuilds in the background
        self._saved_name: str | None = None  # the saved model serving, if any
        self._refused: str | None = None  # a saved model found not to be trusted

    def _build(
        self, as_of: datetime, versions_: tuple[int, ...], *, apart: bool = False
    ) -> _Cached:
        started = time.monotonic()
        keep = self._keeps()
        if apart:
            built = _build_in_process(
                self.store, as_of, self.settings, self.folder if keep else None, versions_
            )
        else:
            built = FeedModel.build(self.store, as_of, self.settings)
        where = " in a separate process" if apart else ""
        log.info(
            "feed model as of %s built%s in %.2f s",
            iso(as_of),
            where,
            time.monotonic() - started,
        )
        if not isinstance(built, FeedModel):  # saved by the build process: map it
            self._saved_name = built.name
            return _Cached(built.model, versions_, time.monotonic())
        if keep and self.folder is not None:
            self._keep(built, versions_, self.folder)
        return _Cached(built, versions_, time.monotonic())

    def _keep(self, model: FeedModel, versions_: tuple[int, ...], folder: Path) -> None:
        """Save `model` for later processes (not when another process is building)."""
        try:
            with build_lock(folder) as got:
                if got:
                    self._saved_name = save(
                        model,
                        folder,
                        store_id=store_identity(self.store),
                        versions_=versions_,
                        settings=self.settings,
                    )
        except OSError as exc:
            log.warning("the feed model could not be saved under %s: %s", folder, exc)

    def _contacts_top(self) -> int:
        with self.store.read() as conn:
            top = conn.scalar(select(func.max(self.store.tables.contacts.c.pk)))
        return int(top or 0)

    def _keeps(self) -> bool:
        """Whether a model of this store is kept on disk (see the class docstring)."""
        return (
            self.folder is not None
            and self.store.shared
            and store_identity(self.store) != 0
            and self._contacts_top() >= self.keep_from_contacts
        )

    def _build_apart(self) -> bool:
        """Whether a background build goes to a separate process: a big store
        that another process can open (not an in-memory SQLite database)."""
        if not self.store.shared:
            return False
        return self._contacts_top() >= BUILD_APART_CONTACTS

    def _open_saved(self, *, newer_than: _Cached | None = None) -> tuple[_Cached, str] | None:
        """The saved model of this store, if there is one to trust (and it was built
        after `newer_than`); a refused one is logged once and left for a build."""
        if self.folder is None or not self.store.shared:
            return None
        manifest = read_manifest(self.folder)
        if manifest is None or manifest.get("model") in (self._saved_name, self._refused):
            return None
        if newer_than is not None:
            age = time.time() - float(manifest.get("built_at") or 0)
            if time.monotonic() - age <= newer_than.built:
                return None
        try:
            saved = open_saved(self.folder, store_identity(self.store), self.settings)
        except SavedModelRefused as exc:
            self._refused = str(manifest.get("model"))
            log.warning(
                "the saved feed model under %s is not used (%s): building one", self.folder, exc
            )
            return None
        log.info("feed model as of %s opened from %s", iso(saved.model.as_of), self.folder)
        return _cached_from(saved), saved.name

    def _adopt(self, opened: tuple[_Cached, str], *, replace: bool = False) -> None:
        with self._lock:
            if self._current is None or replace:
                self._current, self._saved_name = opened

    def _stale(self, cached: _Cached, versions_: tuple[int, ...]) -> bool:
        age = time.monotonic() - cached.built
        return cached.versions != versions_ or age > self.settings.feed_model_max_age_s

    def _rebuild_in_background(self) -> None:
        def run() -> None:
            try:
                if self.folder is not None and building_elsewhere(self.folder):
                    log.info("feed model: another process is building it; not building here")
                    return
                with self.store.read() as conn:
                    now_versions = data_versions(conn, self.store)
                cached = self._build(utcnow(), now_versions, apart=self._build_apart())
                with self._lock:
                    self._current = cached
            except BuildStopped as exc:
                log.info("feed model rebuild stopped: %s", exc)
            except Exception:
                log.exception("rebuilding the feed model failed; the old one keeps serving")
            finally:
                self._rebuilding = False

        with self._lock:
            if self._rebuilding:
                return
            self._rebuilding = True
        threading.Thread(target=run, name="feed-model-rebuild", daemon=True).start()

    def warm(self) -> None:
        """Make the model ready for a server (called at start-up, so the first feed
        request does not pay for a build): open the saved model if there is one,
        and build (again) in the background when there is none or it is stale."""
        self._serving = True
        if self._current is None:
            opened = self._open_saved()
            if opened is not None:
                self._adopt(opened)
                cached = opened[0]
                with self.store.read() as conn:
                    now_versions = data_versions(conn, self.store)
                if not self._stale(cached, now_versions):
                    return
                if time.monotonic() - cached.built < self.settings.feed_model_rebuild_gap_s:
                    return
        self._rebuild_in_background()

    def current(self, versions_: tuple[int, ...]) -> FeedModel:
        """The model serving "now", built or rebuilt as the module docstring says."""
        if self._current is None:
            # A start-up build is running: wait for it rather than build twice.
            deadline = time.monotonic() + WARM_WAIT_S
            while self._rebuilding and self._current is None and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._current is None:
            opened = self._open_saved()
            if opened is not None:
                self._adopt(opened)
        cached = self._current
        if cached is not None and not self._stale(cached, versions_):
            return cached.model
        if cached is not None:
            # Another process may have saved a newer model since.
            newer = self._open_saved(newer_than=cached)
            if newer is not None:
                self._adopt(newer, replace=True)
                cached = newer[0]
                if not self._stale(cached, versions_):
                    return cached.model
        if (
            cached is not None
            and not self._serving
            and self._saved_name is not None
            and time.monotonic() - cached.built <= self.settings.feed_model_max_age_s
        ):
            return cached.model  # a CLI process: the saved model is young enough
        in_background = self._serving or self._saved_name is None  # a CLI builds right away
        if cached is not None and in_background and cached.model.build_seconds >= SYNC_REBUILD_S:
            if time.monotonic() - cached.built >= self.settings.feed_model_rebuild_gap_s:
                self._rebuild_in_background()
            return cached.model
        with self._lock:
            cached = self._current
            if cached is None or self._stale(cached, versions_):
                cached = self._current = self._build(utcnow(), versions_)
            return cached.model

    def at(self, as_of: datetime, versions_: tuple[int, ...]) -> FeedModel:
        """A model built for `as_of` exactly (kept among the last few)."""
        with self._lock:
            cached = self._history.get(as_of)
            if cached is None or cached.versions != versions_:
                cached = self._build(as_of, versions_)
                self._history[as_of] = cached
            self._history.move_to_end(as_of)
            while len(self._history) > HISTORY_MODELS:
                self._history.popitem(last=False)
            return cached.model

    def model_for(self, as_of: datetime | None, versions_: tuple[int, ...]) -> FeedModel:
        model = self.current(versions_)
        if as_of is None or as_of >= model.as_of:
            return model
        return self.at(as_of, versions_)


def _build_in_process(
    store: Store,
    as_of: datetime,
    settings: Settings,
    folder: Path | None = None,
    versions_: tuple[int, ...] = (),
) -> FeedModel | Saved:
    """FeedModel.build in a fresh interpreter over the same store (spawned, not
    forked: the server's threads and open connections stay out of it). The child
    is a daemon: a server that stops does not wait for its build.

    With a `folder`, the child saves the model there (holding the build lock)
    and this process maps the saved files: the model never crosses the pipe,
    and this process holds only the pages its requests touch. BuildStopped when
    another process holds the build lock."""
    url = store.engine.url.render_as_string(hide_password=False)
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_build_and_send,
        args=(url, as_of, settings, send, folder, versions_),
        name="feed-model-build",
        daemon=True,
    )
    child.start()
    send.close()
    try:
        outcome, value = receive_result(receive, child)
    finally:
        receive.close()
    child.join()
    if outcome == "busy":
        raise BuildStopped("another process is building the feed model")
    if outcome == "saved" and folder is not None:
        try:
            return open_saved(folder, store_identity(store), settings)
        except SavedModelRefused as exc:
            raise RuntimeError(f"the feed model just saved cannot be opened: {exc}") from None
    if outcome != "ok":
        raise RuntimeError(f"the feed model build process failed: {value}")
    model: FeedModel = value
    return model


def receive_result(receive: Any, child: Any) -> tuple[str, Any]:
    """The (outcome, value) a build process sent. A process that ended before
    sending, or while sending (stopped halfway through a large model), raises
    BuildStopped when a signal stopped it, RuntimeError otherwise."""
    try:
        outcome, value = receive.recv()
    except (EOFError, OSError):  # OSError: "got end of file during message"
        child.join()
        if child.exitcode in (-signal.SIGTERM, -signal.SIGINT):
            raise BuildStopped(
                f"the build process was stopped by signal {-child.exitcode}"
            ) from None
        raise RuntimeError(
            f"the feed model build process ended without a model (exit code {child.exitcode})"
        ) from None
    return outcome, value


def _build_and_send(
    url: str,
    as_of: datetime,
    settings: Settings,
    send: Any,
    folder: Path | None = None,
    versions_: tuple[int, ...] = (),
) -> None:
    try:
        store = open_store(url)
        try:
            if folder is None:
                send.send(("ok", FeedModel.build(store, as_of, settings)))
                return
            with build_lock(folder) as got:
                if not got:
                    send.send(("busy", None))
                    return
                model = FeedModel.build(store, as_of, settings)
                name = save(
                    model,
                    folder,
                    store_id=store_identity(store),
                    versions_=versions_,
                    settings=settings,
                )
            send.send(("saved", name))
        finally:
            store.dispose()
    except Exception as exc:
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()


_SERVICES: weakref.WeakKeyDictionary[Store, FeedService] = weakref.WeakKeyDictionary()
_SERVICES_LOCK = threading.Lock()


def service_for(store: Store, settings: Settings | None = None) -> FeedService:
    """The process-wide service of `store` (created with `settings` on first use)."""
    with _SERVICES_LOCK:
        service = _SERVICES.get(store)
        if service is None:
            settings = settings or Settings()
            folder = model_folder(settings, store) if store.shared else None
            service = _SERVICES[store] = FeedService(store, settings, folder=folder)
        return service


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise InputError(f"k must be from 1 to {MAX_K}, not {k}")
    return k


def check_feed_as_of(as_of: datetime | None) -> datetime | None:
    """`as_of` (UTC) if a feed can be served for it; InputError if out of range or
    in the future (nothing is published there yet)."""
    if as_of is None:
        return None
    as_of = check_as_of(as_of)
    if as_of > utcnow() + FUTURE_SLACK:
        raise InputError(f"as_of {iso(as_of)} is in the future: leave it out to mean now")
    return as_of


def feed_for(
    store: Store,
    contact_id: str,
    k: int = 10,
    as_of: datetime | None = None,
    settings: Settings | None = None,
    ranker: str = "ours",
) -> dict[str, Any]:
    """`{"contact", "as_of", "items": [{"id", "title", "score", "reason", "series",
    "sector", "published_at", "rules"}]}`: the contact's top `k` reports, best
    first; "rules" names the feed rules that moved each (recommend.explain).

    Only reports published before as_of and not read by the contact at or
    before it are eligible. `as_of` None means now (the serving model's time,
    reported in the answer). `ranker` "b0".."b4" ranks by that baseline instead
    (no content rules; the answer then says `"ranker"`). Raises NotFoundError
    for an unknown contact and InputError for a bad k, as_of or ranker.
    """
    check_k(k)
    as_of = check_feed_as_of(as_of)
    if ranker not in RANKER_KEYS:
        raise InputError(f"unknown ranker {ranker!r}: use one of {', '.join(RANKER_KEYS)}")
    t = store.tables
    service = service_for(store, settings)
    with store.read() as conn:
        contact_pk = conn.scalar(select(t.contacts.c.pk).where(t.contacts.c.id == contact_id))
        if contact_pk is None:
            raise NotFoundError(f"unknown contact {contact_id!r}")
        versions_ = data_versions(conn, store)
    model = service.model_for(as_of, versions_)
    effective = model.as_of if as_of is None or as_of > model.as_of else as_of
    with store.read() as conn:
        rules = rules_for_model(store, effective, conn, pins_at=as_of or utcnow())
        held = list(
            conn.scalars(
                select(t.personas.c.key)
                .join(t.membership_rows, t.membership_rows.c.persona_pk == t.personas.c.pk)
                .where(
                    t.membership_rows.c.contact_pk == contact_pk, t.personas.c.archived_at.is_(None)
                )
                .distinct()
            )
        )
        read = set(
            conn.scalars(
                select(t.reads.c.publication_pk).where(
                    t.reads.c.contact_pk == contact_pk, t.reads.c.read_at <= effective
                )
            )
        )
    model_as_of = None if effective >= model.as_of else effective
    # Reads the model may not know yet can only remove items: ask for that many more.
    want = k + min(len(read), MAX_K)
    if not model.snap.n_pubs:  # an empty catalogue: nothing to rank
        items = []
    elif ranker != "ours":
        items = _baseline_items(model, ranker, int(contact_pk), effective, want)
    else:
        items = model.recommend(int(contact_pk), want, as_of=model_as_of, rules=rules, held=held)
    items = [i for i in items if i.publication_pk not in read]
    p = t.publications
    with store.read(lenient=True) as conn:  # a few rows to show
        rows = {
            r.pk: r
            for r in conn.execute(
                select(p.c.pk, p.c.id, p.c.title, p.c.series, p.c.sector, p.c.published_at).where(
                    p.c.pk.in_([i.publication_pk for i in items])
                )
            )
        }
    shown = [
        i
        for i in items
        if (row := rows.get(i.publication_pk)) is not None
        and row.published_at is not None
        and row.published_at < effective
    ][:k]
    behind = (
        rules_behind(store, int(contact_pk), [i.publication_pk for i in shown], effective)
        if ranker == "ours"
        else {}
    )
    out = []
    for item in shown:
        row = rows[item.publication_pk]
        out.append(
            {
                "id": row.id,
                "title": row.title,
                "score": round(item.score, 6),
                "reason": item.reason,
                "series": row.series,
                "sector": row.sector,
                "published_at": iso(row.published_at),
                "rules": behind.get(item.publication_pk, []),
            }
        )
    answer: dict[str, Any] = {"contact": contact_id, "as_of": iso(effective), "items": out}
    if ranker != "ours":
        answer["ranker"] = ranker
    return answer


def _baseline_items(
    model: FeedModel, ranker: str, contact_pk: int, as_of: datetime, k: int
) -> list[Item]:
    """The top `k` eligible reports by a baseline (feed/baselines.py), best first."""
    name, reason = BASELINE_KEYS[ranker]
    scores = BASELINES[name](model, [contact_pk], to_micros(as_of))[0]
    eligible = np.flatnonzero(np.isfinite(scores))
    top = eligible[np.argsort(-scores[eligible], kind="stable")[:k]]
    pub_pk = model.snap.pub_pk
    return [Item(int(pub_pk[j]), float(scores[j]), f"{name}: {reason}") for j in top]
