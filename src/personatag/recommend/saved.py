"""The built feed model on disk: .npy files a new process memory-maps instead
of building the model again.

`<data_dir>/feed-model/<store key>/` (one folder per store, like the columnar
copy) holds model folders `m-<hex>/` (the model's arrays, one .npy each, and
`meta.json` with its lists: titles, series names, persona keys...) and
`MANIFEST.json`, which names the current one and says what it reflects: the
store's identity, the data versions the model was built from (reads,
publications, newest membership-log seq), its as_of, when it was built and how
long that took, and the feed settings it was built with. The manifest is
replaced atomically after the folder is complete (files fsynced), so a reader
sees the old model or the new one, never a part; folders the new and the
previous manifest do not name are removed (a process that mapped one keeps
its pages: removing an open file on Linux does not take them away).

Opening checks the manifest against the store and settings and each file's
dtype, shape, size and a checksum of its first and last bytes: a model of
another store, of other settings, of another format or with a damaged or
foreign file is refused (`SavedModelRefused`) and the caller builds instead.
The arrays are opened read-only and mapped, so a model of 10M contacts costs
the pages a request touches, not gigabytes of resident memory.

`build_lock` is an flock on `lock` that a process holds while it builds, so
processes sharing a data directory do not build the same model twice at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from personatag.config import Settings
from personatag.files import atomic_write, folder_lock
from personatag.recommend.model import FACETS, FeedModel
from personatag.recommend.snapshot import Snapshot
from personatag.store import Store, versions
from personatag.store.db import STORE_IDENTITY
from personatag.store.types import from_micros

FORMAT = 1
FOLDER = "feed-model"
MANIFEST = "MANIFEST.json"
META = "meta.json"
# Bytes at each end of a file that its checksum covers (the header and the data's
# ends: a truncated, rewritten or swapped file is caught without reading it all).
CHECKED_BYTES = 1 << 16
# What the model depends on besides the data (a change rebuilds it).
SETTINGS_FIELDS = (
    "feed_weight_persona",
    "feed_weight_coverage",
    "feed_weight_similar",
    "feed_weight_fresh",
    "feed_freshness",
    "feed_fresh_horizon_days",
    "feed_half_life_days",
    "feed_popularity_days",
    "feed_popularity_half_life_days",
    "feed_neighbours",
)
_SPARSE = ("reads", "members", "similarity")


class SavedModelRefused(Exception):
    """The saved model does not belong to this store, these settings or this
    format, or a file of it is damaged: build instead."""


@dataclass(frozen=True)
class Saved:
    """A saved model, opened, with what its manifest says about it."""

    model: FeedModel
    name: str  # the model folder's name
    versions: tuple[int, ...]
    built_at: float  # time.time() when the build finished
    build_seconds: float


def model_folder(settings: Settings, store: Store) -> Path:
    """`<data_dir>/feed-model/<store key>`."""
    from personatag.engines.columnar.folders import store_key

    return Path(settings.data_dir) / FOLDER / store_key(store)


def store_identity(store: Store) -> int:
    """The store's random identity (0 when it has none yet)."""
    with store.read() as conn:
        return versions.current(conn, store.tables, [STORE_IDENTITY])[STORE_IDENTITY]


def settings_of(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in SETTINGS_FIELDS}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest, or None when there is none or it is not readable JSON."""
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError, UnicodeDecodeError):
        return None
    return found if isinstance(found, dict) else None


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[bool]:
    """Hold the folder's build lock: yields False (holding nothing) when another
    process holds it."""
    with folder_lock(folder, wait=False) as mine:
        yield mine


def building_elsewhere(folder: Path) -> bool:
    """Whether a process holds the build lock now."""
    if not folder.exists():
        return False
    with build_lock(folder) as got:
        return not got


# -- writing ------------------------------------------------------------------


def _arrays(model: FeedModel) -> dict[str, npt.NDArray[Any]]:
    snap = model.snap
    out: dict[str, npt.NDArray[Any]] = {
        "pub_pk": snap.pub_pk,
        "pub_published_us": snap.pub_published_us,
        "pub_series": snap.pub_series,
        "pub_sector": snap.pub_sector,
        "pub_asset": snap.pub_asset,
        "pub_region": snap.pub_region,
        "contact_pk": snap.contact_pk,
        "read_first_us": snap.read_first_us,
        "read_last_us": snap.read_last_us,
        "persona_rate": model.persona_rate,
        "global_rate": model.global_rate,
        "facet_combos": model.facet_combos,
        "combo_of_pub": model.combo_of_pub,
    }
    for name, matrix in (
        ("reads", snap.reads),
        ("members", snap.members),
        ("similarity", model.similarity),
    ):
        out[f"{name}.data"] = matrix.data
        out[f"{name}.indices"] = matrix.indices
        out[f"{name}.indptr"] = matrix.indptr
    for f in range(len(FACETS)):
        out[f"base_share.{f}"] = model.base_share[f]
        out[f"persona_mix.{f}"] = model.persona_mix[f]
        out[f"global_mix.{f}"] = model.global_mix[f]
    if model.fresh_curve is not None:
        out["fresh_curve"] = model.fresh_curve
    return out


def _checksum(path: Path) -> int:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        crc = zlib.crc32(handle.read(CHECKED_BYTES))
        if size > CHECKED_BYTES:
            handle.seek(max(CHECKED_BYTES, size - CHECKED_BYTES))
            crc = zlib.crc32(handle.read(CHECKED_BYTES), crc)
    return crc


def _write_array(path: Path, array: npt.NDArray[Any]) -> dict[str, Any]:
    with open(path, "xb") as out:
        np.save(out, np.ascontiguousarray(array), allow_pickle=False)
        out.flush()
        os.fsync(out.fileno())
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "size": path.stat().st_size,
        "crc": _checksum(path),
    }


def save(
    model: FeedModel,
    folder: Path,
    *,
    store_id: int,
    versions_: tuple[int, ...],
    settings: Settings,
    built_at: float | None = None,
) -> str:
    """Write `model` as a new model folder and make it the manifest's; returns the
    folder's name. The caller should hold `build_lock`."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"m-{secrets.token_hex(6)}"
    path = folder / name
    path.mkdir()
    try:
        files = {key: _write_array(path / f"{key}.npy", a) for key, a in _arrays(model).items()}
        snap = model.snap
        meta = {
            "as_of_us": snap.as_of_us,
            "series_names": snap.series_names,
            "sector_names": snap.sector_names,
            "pub_titles": snap.pub_titles,
            "pub_rows": [
                [r["id"], r["title"], r["asset_class"], r["region"]] for r in snap.pub_rows
            ],
            "persona_keys": snap.persona_keys,
            "persona_names": snap.persona_names,
            "matrix_shapes": {
                "reads": list(snap.reads.shape),
                "members": list(snap.members.shape),
                "similarity": list(model.similarity.shape),
            },
        }
        atomic_write(path / META, json.dumps(meta))
        manifest = {
            "format": FORMAT,
            "store": store_id,
            "model": name,
            "versions": list(versions_),
            "as_of_us": snap.as_of_us,
            "built_at": time.time() if built_at is None else built_at,
            "build_seconds": model.build_seconds,
            "settings": settings_of(settings),
            "files": files,
            "meta_crc": _checksum(path / META),
        }
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    previous = read_manifest(folder)
    atomic_write(folder / MANIFEST, json.dumps(manifest))
    keep = {name, (previous or {}).get("model")}
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name.startswith("m-") and entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)
    return name


# -- reading ------------------------------------------------------------------


def _open_array(path: Path, expected: dict[str, Any]) -> npt.NDArray[Any]:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SavedModelRefused(f"{path.name} is missing") from None
    if size != expected["size"]:
        raise SavedModelRefused(
            f"{path.name} has {size} bytes, the manifest says {expected['size']}"
        )
    if _checksum(path) != expected["crc"]:
        raise SavedModelRefused(f"{path.name} is not the file the manifest names (checksum)")
    try:
        array: npt.NDArray[Any] = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SavedModelRefused(f"{path.name} cannot be read: {exc}") from None
    if array.dtype.str != expected["dtype"] or list(array.shape) != expected["shape"]:
        raise SavedModelRefused(f"{path.name} holds {array.dtype.str}{list(array.shape)}, "
                                f"not {expected['dtype']}{expected['shape']}")  # fmt: skip
    return array


def _csr(arrays: dict[str, npt.NDArray[Any]], name: str, shape: list[int]) -> sp.csr_matrix:
    data, indices, indptr = (arrays[f"{name}.{part}"] for part in ("data", "indices", "indptr"))
    n_rows, n_cols = shape
    if (
        len(indptr) != n_rows + 1
        or len(indices) != len(data)
        or (len(indptr) and (int(indptr[0]) != 0 or int(indptr[-1]) != len(indices)))
    ):
        raise SavedModelRefused(f"the {name} matrix's arrays do not fit together")
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols), copy=False)


def open_saved(folder: Path, store_id: int, settings: Settings) -> Saved:
    """The manifest's model, mapped; SavedModelRefused if it cannot be trusted
    (the reason says why)."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise SavedModelRefused("no readable manifest")
    try:
        if manifest.get("format") != FORMAT:
            raise SavedModelRefused(f"format {manifest.get('format')!r}, not {FORMAT}")
        if not store_id or manifest.get("store") != store_id:
            raise SavedModelRefused("the model belongs to another store")
        if manifest.get("settings") != settings_of(settings):
            raise SavedModelRefused("the feed settings changed since the model was built")
        name = str(manifest["model"])
        path = folder / name
        if not name.startswith("m-") or not path.is_dir():
            raise SavedModelRefused(f"the model folder {name!r} is missing")
        if not (path / META).exists() or _checksum(path / META) != manifest["meta_crc"]:
            raise SavedModelRefused(f"{META} is missing or not the manifest's")
        meta = json.loads((path / META).read_text())
        arrays = {
            key: _open_array(path / f"{key}.npy", expected)
            for key, expected in manifest["files"].items()
        }
        model = _model(arrays, meta, settings)
        model.build_seconds = float(manifest["build_seconds"])
        return Saved(
            model=model,
            name=name,
            versions=tuple(int(v) for v in manifest["versions"]),
            built_at=float(manifest["built_at"]),
            build_seconds=float(manifest["build_seconds"]),
        )
    except SavedModelRefused:
        raise
    except (KeyError, TypeError, ValueError, IndexError, OSError) as exc:
        raise SavedModelRefused(f"the model is not readable: {type(exc).__name__}: {exc}") from None


def _model(
    arrays: dict[str, npt.NDArray[Any]], meta: dict[str, Any], settings: Settings
) -> FeedModel:
    shapes = meta["matrix_shapes"]
    reads = _csr(arrays, "reads", shapes["reads"])
    pub_pk = arrays["pub_pk"]
    published = arrays["pub_published_us"]
    n_pub = len(pub_pk)
    for key in ("pub_published_us", "pub_series", "pub_sector", "pub_asset", "pub_region",
                "combo_of_pub", "global_rate"):  # fmt: skip
        if len(arrays[key]) != n_pub:
            raise SavedModelRefused(f"{key} has {len(arrays[key])} entries for {n_pub} reports")
    if len(meta["pub_rows"]) != n_pub or len(meta["pub_titles"]) != n_pub:
        raise SavedModelRefused("meta.json does not describe the model's reports")
    if len(arrays["read_first_us"]) != reads.nnz or len(arrays["read_last_us"]) != reads.nnz:
        raise SavedModelRefused("the read times do not fit the reads matrix")
    series_names, sector_names = meta["series_names"], meta["sector_names"]
    pub_series, pub_sector = arrays["pub_series"], arrays["pub_sector"]
    rows = [
        {"pk": int(pk), "published_at": from_micros(int(at)), "id": ident, "title": title,
         "series": series_names[int(s)], "sector": sector_names[int(c)],
         "asset_class": asset, "region": region}
        for pk, at, s, c, (ident, title, asset, region)
        in zip(pub_pk.tolist(), published.tolist(), pub_series.tolist(), pub_sector.tolist(),
               meta["pub_rows"], strict=True)
    ]  # fmt: skip
    keys = [str(k) for k in meta["persona_keys"]]
    as_of_us = int(meta["as_of_us"])
    snap = Snapshot(
        as_of=from_micros(as_of_us),
        as_of_us=as_of_us,
        pub_pk=pub_pk,
        pub_published_us=published,
        pub_series=pub_series,
        series_names=series_names,
        pub_sector=pub_sector,
        sector_names=sector_names,
        pub_asset=arrays["pub_asset"],
        pub_region=arrays["pub_region"],
        pub_titles=[str(t) for t in meta["pub_titles"]],
        pub_rows=rows,
        contact_pk=arrays["contact_pk"],
        reads=reads,
        read_first_us=arrays["read_first_us"],
        read_last_us=arrays["read_last_us"],
        members=_csr(arrays, "members", shapes["members"]),
        persona_keys=keys,
        persona_names=[str(n) for n in meta["persona_names"]],
        persona_index={k: i for i, k in enumerate(keys)},
    )
    if snap.members.shape[0] != len(snap.contact_pk) or reads.shape[0] != len(snap.contact_pk):
        raise SavedModelRefused("the matrices do not fit the model's contacts")
    parts = {
        "persona_rate": arrays["persona_rate"],
        "global_rate": arrays["global_rate"],
        "base_share": [arrays[f"base_share.{f}"] for f in range(len(FACETS))],
        "persona_mix": [arrays[f"persona_mix.{f}"] for f in range(len(FACETS))],
        "global_mix": [arrays[f"global_mix.{f}"] for f in range(len(FACETS))],
        "facet_combos": arrays["facet_combos"],
        "combo_of_pub": arrays["combo_of_pub"],
        "similarity": _csr(arrays, "similarity", shapes["similarity"]),
        "fresh_curve": arrays.get("fresh_curve"),
    }
    return FeedModel.from_parts(snap, settings, parts)
