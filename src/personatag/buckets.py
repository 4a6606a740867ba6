"""Object storage for the request pipeline: named areas on local folders or S3 (fsspec).

Without ``PERSONATAG_BUCKET_URL`` each area is a folder under
``$PERSONATAG_DATA_DIR/buckets/<area>/``; with ``s3://BUCKET/PREFIX`` it is
``s3://BUCKET/PREFIX/<area>/``. Keys are ``/``-separated paths relative to the area.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import shutil
import stat
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import fsspec

from personatag.errors import ConfigError, InputError
from personatag.files import TEMP_SUFFIX, atomic_file

if TYPE_CHECKING:
    from personatag.config import Settings

AREAS: tuple[str, ...] = ("requests", "results", "artifacts", "job-properties", "staging")

MAX_KEY_BYTES = 1024  # S3's own limit on a key
_TEMP_SUFFIX = TEMP_SUFFIX
_COPY_CHUNK = 1 << 20


class BucketError(InputError):
    """A bad key, a missing object or a storage failure; the message names area and key."""


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)


def _shown(key: str) -> str:
    return repr(key if len(key) <= 80 else key[:60] + "...")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise BucketError saying why.

    A key is ``/``-separated, relative, at most 1024 bytes of UTF-8, with no empty,
    ``.`` or ``..`` segment, no backslash, no control character, and no segment
    shaped like a temp file (``.NAME.part``), which listings hide.
    """
    if not isinstance(key, str):
        raise BucketError(f"invalid bucket key {key!r}: must be a string")
    problem = None
    if not key:
        problem = "empty"
    elif len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        problem = f"longer than {MAX_KEY_BYTES} bytes"
    elif key.startswith("/"):
        problem = "must be relative (no leading '/')"
    elif "\\" in key:
        problem = "contains a backslash; use '/' between segments"
    elif any(unicodedata.category(ch) == "Cc" for ch in key):
        problem = "contains a control character (NUL, newline, ...)"
    else:
        for segment in key.split("/"):
            if segment in ("", ".", ".."):
                problem = "has an empty, '.' or '..' segment"
                break
            if _is_temp_name(segment):
                problem = f"segment {segment!r} is reserved for temp files (.NAME{_TEMP_SUFFIX})"
                break
    if problem:
        raise BucketError(f"invalid bucket key {_shown(key)}: {problem}")
    return key


def _validate_prefix(prefix: str) -> str:
    # A prefix is a key, a folder ending in '/', or the start of a segment.
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class Bucket:
    """One area of object storage. Every write is atomic: readers see old or new, never part."""

    def __init__(self, area: str, fs: Any, root: str, hint: str = "") -> None:
        self.area = area
        self.local_root: Path | None = None
        self._fs = fs
        self._root = root.rstrip("/")
        self._hint = f"; {hint}" if hint else ""

    def __repr__(self) -> str:
        return f"<Bucket {self.area} at {self._fs.unstrip_protocol(self._root)}>"

    # Where an object lives, in the file system's own terms.
    def _path(self, key: str) -> str:
        return f"{self._root}/{validate_key(key)}"

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn storage failures into a BucketError naming area, key and location."""
        try:
            yield
        except BucketError:
            raise
        except FileNotFoundError:
            raise BucketError(
                f"cannot {action} {key!r} in bucket area {self.area!r}: no such object "
                f"at {self.url(key)}"
            ) from None
        except PermissionError as exc:
            raise BucketError(
                f"cannot {action} {key!r} in bucket area {self.area!r}: permission denied "
                f"at {self.url(key)} ({exc}){self._hint}"
            ) from exc
        except Exception as exc:
            raise BucketError(
                f"cannot {action} {key!r} in bucket area {self.area!r} at {self.url(key)}: "
                f"{type(exc).__name__}: {exc}{self._hint}"
            ) from exc

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any object there, atomically."""
        path = self._path(key)
        with self._errors("write", key):
            self._fs.pipe_file(path, bytes(data))

    def put_file(self, key: str, path: Path) -> None:
        """Copy the local file ``path`` to ``key`` in chunks (never all in memory), atomically."""
        target = self._path(key)
        _check_source(path)
        with self._errors("write", key):
            self._fs.put_file(str(path), target)

    def get(self, key: str) -> bytes:
        """The whole object; BucketError if it does not exist."""
        path = self._path(key)
        with self._errors("read", key):
            data: bytes = self._fs.cat_file(path)
            return data

    def open(self, key: str) -> BinaryIO:
        """A streaming binary reader (use as a context manager); read errors are BucketErrors."""
        path = self._path(key)
        with self._errors("open", key):
            if not self._is_file(path):
                raise FileNotFoundError(path)
            handle = self._fs.open(path, "rb")
        raw = _Reader(handle, lambda action: self._errors(action, key))
        return io.BufferedReader(raw, buffer_size=_COPY_CHUNK)

    def exists(self, key: str) -> bool:
        """True if an object (not a folder) is stored under ``key``."""
        path = self._path(key)
        with self._errors("check", key):
            return self._is_file(path)

    def size(self, key: str) -> int:
        """The object's size in bytes; BucketError if it does not exist."""
        path = self._path(key)
        with self._errors("stat", key):
            info = self._fs.info(path)
            if info.get("type") != "file":
                raise FileNotFoundError(path)
            return int(info["size"])

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Keys starting with ``prefix`` (string match, as on S3), sorted, at any depth.

        Folders and temp files of unfinished writes are left out.
        """
        _validate_prefix(prefix)
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = f"{self._root}/{folder}" if folder else self._root
        with self._errors("list", prefix or "(all keys)"):
            found = self._fs.find(base, withdirs=False)
        start = len(self._root) + 1
        keys = []
        for full in found:
            key = full[start:]
            if (
                key
                and not key.endswith("/")
                and key.startswith(prefix)
                and not any(_is_temp_name(seg) for seg in key.split("/"))
            ):
                keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        """Remove the object under ``key``; a missing object is not an error."""
        path = self._path(key)
        with self._errors("delete", key), contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(path)

    def url(self, key: str) -> str:
        """Where the object lives, as a URL (``s3://...`` or ``file:///...``).

        ``url("")`` is the area itself, ending in ``/`` (for messages and logs).
        """
        path = self._path(key) if key else self._root + "/"
        return str(self._fs.unstrip_protocol(path))

    def _is_file(self, path: str) -> bool:
        # fsspec's isfile() answers False on any error; a network failure must not
        # look like a missing object.
        try:
            info = self._fs.info(path)
        except FileNotFoundError:
            return False
        return bool(info.get("type") == "file")


class LocalBucket(Bucket):
    """An area in a local folder; writes go to a temp file in the target folder, then os.replace.

    Only regular files in plain folders are objects: a symbolic link (to a file
    or a folder) or a FIFO, socket or device under the area is refused when
    read, without opening what it points to, and never written through. Other
    processes drop files into these folders; a link to /etc/passwd must not
    end up in a report.
    """

    def __init__(self, area: str, root: Path) -> None:
        root = root.resolve()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BucketError(
                f"cannot create the folder {root} for bucket area {area!r}: {exc}"
            ) from exc
        super().__init__(area, fsspec.filesystem("file"), root.as_posix())
        self.local_root = root
        self._folder = root

    def put(self, key: str, data: bytes) -> None:
        validate_key(key)
        with self._errors("write", key):
            self._write(key, lambda out: out.write(data))

    def get(self, key: str) -> bytes:
        validate_key(key)
        with self._errors("read", key), self._open_regular(key) as handle:
            return handle.read()

    def open(self, key: str) -> BinaryIO:
        validate_key(key)
        with self._errors("open", key):
            handle = self._open_regular(key)
        raw = _Reader(handle, lambda action: self._errors(action, key))
        return io.BufferedReader(raw, buffer_size=_COPY_CHUNK)

    def size(self, key: str) -> int:
        validate_key(key)
        with self._errors("stat", key):
            return self._lstat(key).st_size

    def _is_file(self, path: str) -> bool:
        # Anything but a folder counts, so that reading it says why it is refused.
        key = path[len(self._root) + 1 :]
        try:
            self._lstat(key, regular=False)
        except FileNotFoundError:
            return False
        except BucketError:  # a link: there is something, and reading it says why not
            return True
        return True

    def _lstat(self, key: str, *, regular: bool = True) -> os.stat_result:
        """The lstat of `key`'s file: FileNotFoundError for a missing object or a
        folder, BucketError for a symbolic link on the way or (with `regular`) a
        final entry that is not a regular file. No link is ever followed."""
        path = self._folder
        parts = key.split("/")
        for i, part in enumerate(parts):
            path = path / part
            try:
                info = os.lstat(path)
            except NotADirectoryError:  # under a file: no such object either
                raise FileNotFoundError(path) from None
            if stat.S_ISLNK(info.st_mode):
                raise BucketError(self._not_regular(key, path, "a symbolic link"))
            if i < len(parts) - 1:
                if not stat.S_ISDIR(info.st_mode):
                    raise FileNotFoundError(path)
            elif stat.S_ISDIR(info.st_mode):
                raise FileNotFoundError(path)
            elif regular and not stat.S_ISREG(info.st_mode):
                raise BucketError(self._not_regular(key, path, "not a regular file"))
        return info

    def _open_regular(self, key: str) -> BinaryIO:
        self._lstat(key)
        # O_NOFOLLOW and the fstat close the gap between the check and the open.
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self._folder / key, flags)
        except OSError as exc:
            if exc.errno == getattr(os, "ELOOP", -1):
                raise BucketError(
                    self._not_regular(key, self._folder / key, "a symbolic link")
                ) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BucketError(self._not_regular(key, self._folder / key, "not a regular file"))
        os.set_blocking(fd, True)
        return builtins.open(fd, "rb")

    def _not_regular(self, key: str, path: Path, what: str) -> str:
        return (
            f"cannot read {key!r} in bucket area {self.area!r}: {path.as_uri()} is {what}; "
            "only regular files are objects in a local bucket (links are not followed)"
        )

    def put_file(self, key: str, path: Path) -> None:
        validate_key(key)
        _check_source(path)

        def copy(out: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out, _COPY_CHUNK)

        with self._errors("write", key):
            self._write(key, copy)

    def url(self, key: str) -> str:
        if not key:
            return self._folder.as_uri() + "/"
        return (self._folder / validate_key(key)).as_uri()

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        target = self._folder / key
        folder = self._folder
        for part in key.split("/")[:-1]:  # never write through a linked folder
            folder = folder / part
            if folder.is_symlink():
                raise BucketError(
                    f"cannot write {key!r} in bucket area {self.area!r}: {folder.as_uri()} "
                    "is a symbolic link; only plain folders hold objects in a local bucket"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as out:
            fill(out)


def _check_source(path: Path) -> None:
    """A missing source file is the caller's mistake, not a missing object."""
    if not Path(path).is_file():
        raise BucketError(f"cannot upload {str(path)!r}: no such local file")


class _Reader(io.RawIOBase):
    """Wraps an fsspec file so errors while streaming become BucketErrors too."""

    def __init__(self, handle: Any, errors: Any) -> None:
        self._handle = handle
        self._errors = errors

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with self._errors("read"):
            data = self._handle.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._errors("seek in"):
            return int(self._handle.seek(offset, whence))

    def tell(self) -> int:
        return int(self._handle.tell())

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._handle.close()
        super().close()


_S3_HINT = "check PERSONATAG_BUCKET_URL and the PERSONATAG_S3_* settings"


def _s3_filesystem(settings: Settings) -> Any:
    try:
        import s3fs  # optional and heavy: only needed for s3:// URLs
    except ImportError:
        raise ConfigError(
            f"PERSONATAG_BUCKET_URL is {settings.bucket_url} but s3fs is not installed: "
            "pip install 'personatag[s3]'"
        ) from None
    options: dict[str, Any] = {
        # Other processes write these areas; a cached listing would hide their objects.
        "use_listings_cache": False,
    }
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key is not None:
        options["key"] = settings.s3_access_key.get_secret_value()
    if settings.s3_secret_key is not None:
        options["secret"] = settings.s3_secret_key.get_secret_value()
    if settings.s3_region:
        options["client_kwargs"] = {"region_name": settings.s3_region}
    return s3fs.S3FileSystem(**options)


class Buckets:
    """The areas of one configuration, opened on first use: ``buckets["requests"]``."""

    def __init__(self, settings: Settings) -> None:
        self._opened: dict[str, Bucket] = {}
        self._fs: Any = None
        self._s3_root: str | None = None
        self._local_root = Path(settings.data_dir) / "buckets"
        url = settings.bucket_url
        if url:
            parts = urlsplit(url)
            if parts.scheme != "s3" or not parts.netloc:
                raise ConfigError(
                    f"PERSONATAG_BUCKET_URL: unsupported bucket URL {url!r}: use "
                    "s3://BUCKET/PREFIX, or leave it unset for local folders"
                )
            self._fs = _s3_filesystem(settings)
            self._s3_root = f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/")

    def __getitem__(self, area: str) -> Bucket:
        bucket = self._opened.get(area)
        if bucket is not None:
            return bucket
        if area not in AREAS:
            raise BucketError(f"unknown bucket area {area!r}; the areas are {', '.join(AREAS)}")
        if self._s3_root is not None:
            bucket = Bucket(area, self._fs, f"{self._s3_root}/{area}", hint=_S3_HINT)
        else:
            bucket = LocalBucket(area, self._local_root / area)
        self._opened[area] = bucket
        return bucket


def open_buckets(settings: Settings) -> Buckets:
    """The bucket areas configured by ``settings`` (fails fast on a bad URL or missing s3fs)."""
    return Buckets(settings)
