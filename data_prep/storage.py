"""Local paths and object-store URLs behind one small interface, on fsspec.

A *location* is a string: a local path (`data/shards`, `/mnt/nfs/shards`) or a URL
(`file:///…`, `s3://bucket/prefix`, `gs://bucket/prefix`, or any other scheme fsspec knows).
Credentials come only from where each client library looks for them (the environment,
`~/.aws`, `GOOGLE_APPLICATION_CREDENTIALS`, instance roles); no location or setting holds one.
S3-compatible stores (MinIO, Ceph) are reached with the standard `AWS_ENDPOINT_URL`, a GCS
emulator with the standard `STORAGE_EMULATOR_HOST`.

Writes are whole objects: on a local disk a temporary file, fsync, then a rename; on an object
store a single PUT (an object appears complete or not at all). Every call to an object store
has a bounded time: a request the store does not answer is abandoned and retried a few times
(S3: REMOTE_OPTIONS), and every operation ends by its deadline (`deadline_s`), whatever the
backend; either way the error (a StorageError) names the URL and the operation. Nothing here
imports Ray or MLflow, and fsspec's backends (s3fs, gcsfs) are imported only when a URL is
first used.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BeforeValidator

LOCAL_SCHEMES = ("file", "local")
CHECK_TIMEOUT_S = 20.0  # a reachability check that takes longer reports the store unreachable
# Settings of the quick reachability check only: fail in seconds, not after minutes of retries.
QUICK = {"s3": {"config_kwargs": {"connect_timeout": 5, "read_timeout": 10,
                                  "retries": {"max_attempts": 2}}}}
# Settings of every other call. botocore's defaults wait 60 s for each answer and retry on top
# of s3fs's own 5 tries (25 minutes before a stalled store is reported): here a request with
# no byte of answer for 10 s is retried by botocore (throttling and 5xx too), 3 attempts in
# all, and s3fs (its `retries` attribute, not an option) adds none.
REMOTE_OPTIONS = {"s3": {"config_kwargs": {"connect_timeout": 10, "read_timeout": 10,
                                           "retries": {"total_max_attempts": 3,
                                                       "mode": "standard"}}}}
CLIENT_TRIES = {"s3": 1}
# The deadline of one operation, retries included, over any backend: OPERATION_TIMEOUT_S plus
# the time to move its bytes at MIN_RATE_BPS. It also covers what the client's own limits miss:
# an upload waits for the store's "100 Continue" with no time limit, and gcsfs has no setting
# for its retries. A read's size is not known beforehand: it is allowed a shard's default size.
OPERATION_TIMEOUT_S = 45.0
MIN_RATE_BPS = 2**20
READ_ALLOWANCE_BYTES = 256 * 2**20

T = TypeVar("T")


class StorageError(OSError):
    """A location that cannot be reached, read or written; the message names it."""


def scheme(location: str | os.PathLike) -> str:
    """'s3', 'gs', … of a URL; 'file' for a local path."""
    text = str(location)
    return text.split("://", 1)[0].lower() if "://" in text else "file"


def is_remote(location: str | os.PathLike) -> bool:
    """True for a URL whose scheme is not a local file system."""
    return scheme(location) not in LOCAL_SCHEMES


def check_scheme(value: Any) -> Any:
    """Pydantic validator: a path or a URL of a scheme fsspec knows (no backend imported)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if not isinstance(value, str):
        return value
    if not value.strip():
        raise ValueError("a location may not be empty")
    if "://" in value:
        import fsspec

        if urlsplit(value).password is not None:
            raise ValueError(
                "a location may not hold credentials (user:secret@…); they come from the "
                "environment, ~/.aws or GOOGLE_APPLICATION_CREDENTIALS"
            )
        name = scheme(value)
        known = set(fsspec.available_protocols())
        if name not in known:
            raise ValueError(
                f"unknown storage scheme {name!r} in {value!r}: use a local path or a URL of a "
                "scheme fsspec knows (s3://, gs://, file://, …)"
            )
    return value


# A local path or a URL, validated by scheme only (offline, no client library imported).
Location = Annotated[str, BeforeValidator(check_scheme)]


def local_path(location: str | os.PathLike) -> Path:
    """The path of a local location (a `file://` prefix dropped)."""
    text = os.fspath(location)
    for prefix in ("file://", "local://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return Path(text)


def absolute(location: str | os.PathLike) -> str:
    """A local path made absolute (URLs unchanged), so processes with another cwd agree."""
    text = os.fspath(location)
    if is_remote(text):
        return text.rstrip("/")
    return str(local_path(text).resolve())


def join(location: str | os.PathLike, *names: str) -> str:
    """`location/name/...` for paths and URLs alike."""
    text = os.fspath(location)
    if is_remote(text):
        return posixpath.join(text.rstrip("/"), *names)
    return str(local_path(text).joinpath(*names))


def parent(location: str | os.PathLike) -> str:
    text = os.fspath(location).rstrip("/")
    return posixpath.dirname(text) if is_remote(text) else str(local_path(text).parent)


def name_of(location: str | os.PathLike) -> str:
    return posixpath.basename(os.fspath(location).rstrip("/"))


def filesystem(location: str | os.PathLike, **options: Any):
    """(fsspec file system, path inside it) of a location; an object store's client with the
    time limits of REMOTE_OPTIONS unless `options` say otherwise."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(os.fspath(location),
                         **(REMOTE_OPTIONS.get(scheme(location), {}) | options))
    if scheme(location) in CLIENT_TRIES:
        fs.retries = CLIENT_TRIES[scheme(location)]
    return fs, path


def deadline_s(nbytes: int = 0) -> float:
    """Seconds an operation that moves `nbytes` may take, retries included."""
    return OPERATION_TIMEOUT_S + nbytes / MIN_RATE_BPS


def bounded(operation: str, location: str | os.PathLike, call: Callable[[], T],
            timeout_s: float | None = None) -> T:
    """`call()` (one operation on `location`) within `timeout_s` (default: `deadline_s()`).

    A local location is called as it is. For an object store, any error but "not there" and
    "denied" becomes a StorageError naming the location and the operation, and so does no
    answer within `timeout_s`: the call runs in a daemon thread that is left behind then (its
    client gives up on its own, by its request time limits).
    """
    if not is_remote(location):
        return call()
    timeout_s = deadline_s() if timeout_s is None else timeout_s
    outcome: list[tuple[bool, Any]] = []

    def attempt() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append((False, exc))

    worker = threading.Thread(target=attempt, name=f"nfpipe-storage-{operation}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        raise StorageError(f"{location}: {operation}: no answer from the store within "
                           f"{timeout_s:.0f}s ({endpoint_hint(location)})")
    done, value = outcome[0]
    if done:
        return value
    if isinstance(value, FileNotFoundError | PermissionError | StorageError):
        raise value
    raise StorageError(f"{location}: {operation} failed ({type(value).__name__}: {value}; "
                       f"{endpoint_hint(location)})") from value


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole file or object; FileNotFoundError when it is not there."""
    fs, path = filesystem(location)
    return bounded("read", location, lambda: fs.cat_file(path),
                   deadline_s(READ_ALLOWANCE_BYTES))


def read_many(locations: list[str], batch: int = 256) -> Iterator[bytes]:
    """The bytes of each location in order; an object store is asked `batch` at a time,
    concurrently. FileNotFoundError (its `filename` set) for the first one missing."""
    for start in range(0, len(locations), batch):
        chunk = locations[start : start + batch]
        if not any(is_remote(loc) for loc in chunk):
            for loc in chunk:
                try:
                    yield local_path(loc).read_bytes()
                except FileNotFoundError as exc:
                    raise FileNotFoundError(exc.errno, exc.strerror, loc) from None
            continue
        fs, _ = filesystem(chunk[0])
        paths = [filesystem(loc)[1] for loc in chunk]
        found = bounded("read", chunk[0], partial(fs.cat, paths, on_error="return"),
                        deadline_s(READ_ALLOWANCE_BYTES))
        for loc, path in zip(chunk, paths, strict=True):
            data = found.get(path)
            if isinstance(data, FileNotFoundError) or data is None:
                raise FileNotFoundError(2, "not found", loc)
            if isinstance(data, Exception):
                raise StorageError(f"{loc}: cannot read ({data})")
            yield data


def glob(pattern: str) -> list[str]:
    """Locations matching a glob pattern (a path or a URL with `*`), sorted."""
    fs, path = filesystem(pattern)
    found = sorted(bounded("list", pattern, lambda: fs.glob(path)))
    if not is_remote(pattern):
        return found
    prefix = scheme(pattern) + "://"
    return [prefix + p.lstrip("/") for p in found]


def exists(location: str | os.PathLike) -> bool:
    fs, path = filesystem(location)
    return bounded("look up", location, lambda: fs.exists(path))


def is_file(location: str | os.PathLike) -> bool:
    fs, path = filesystem(location)
    return bounded("look up", location, lambda: fs.isfile(path))


def is_dir(location: str | os.PathLike) -> bool:
    """A local folder, or a prefix holding at least one object."""
    fs, path = filesystem(location)
    return bounded("look up", location, lambda: fs.isdir(path))


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically (local: temporary file, fsync, rename; remote: one PUT)."""
    if not is_remote(location):
        target = Path(absolute(location))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".tmp-{target.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return
    fs, path = filesystem(location)
    with _bucket_must_exist(location):
        bounded("write", location, lambda: fs.pipe_file(path, data), deadline_s(len(data)))


def put_file(local: Path, location: str | os.PathLike) -> None:
    """Move a finished local file to `location` (local: rename; remote: upload, then delete)."""
    if not is_remote(location):
        os.replace(local, absolute(location))
        return
    fs, path = filesystem(location)
    with _bucket_must_exist(location):
        bounded("upload", location, lambda: fs.put_file(str(local), path),
                deadline_s(local.stat().st_size))
    local.unlink()


@contextmanager
def _bucket_must_exist(location: str | os.PathLike) -> Iterator[None]:
    """An object store's FileNotFoundError on a write (it has no folders: the bucket is
    missing) as one that says so; gcsfs's names only the upload URL."""
    try:
        yield
    except FileNotFoundError as exc:
        raise FileNotFoundError(errno.ENOENT, f"the bucket does not exist "
                                f"({endpoint_hint(location)})", os.fspath(location)) from exc


def remove(location: str | os.PathLike) -> None:
    """Delete a file or object; nothing when it is not there."""
    fs, path = filesystem(location)
    try:
        bounded("delete", location, lambda: fs.rm_file(path))
    except FileNotFoundError:
        pass


def list_names(location: str | os.PathLike) -> list[str]:
    """Names of the files directly inside a folder or prefix ([] when there is none)."""
    fs, path = filesystem(location)
    try:
        entries = bounded("list", location, lambda: fs.ls(path, detail=True))
    except FileNotFoundError:
        return []
    return [posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "file"]


def sha256_of(location: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's or object's bytes, streamed."""
    fs, path = filesystem(location)

    def digest() -> str:
        hashing = hashlib.sha256()
        with fs.open(path, "rb", block_size=chunk) as f:
            while block := f.read(chunk):
                hashing.update(block)
        return hashing.hexdigest()

    return bounded("read", location, digest, deadline_s(READ_ALLOWANCE_BYTES))


def make_folder(location: str | os.PathLike) -> None:
    """Create a local folder (object stores have no folders to create)."""
    if not is_remote(location):
        Path(absolute(location)).mkdir(parents=True, exist_ok=True)


@contextmanager
def local_copy(location: str | os.PathLike) -> Iterator[Path]:
    """A local folder with the contents of `location` (itself when local; else a temporary
    download, deleted afterwards)."""
    if not is_remote(location):
        yield Path(absolute(location))
        return
    fs, path = filesystem(location)
    tmp = Path(tempfile.mkdtemp(prefix="nfpipe-download-"))
    try:
        bounded("download", location,
                lambda: fs.get(path.rstrip("/") + "/", str(tmp), recursive=True),
                deadline_s(READ_ALLOWANCE_BYTES))
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_reachable(location: str | os.PathLike, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Raise StorageError when the bucket (or the store) of a URL cannot be listed.

    Quick settings (few retries, short timeouts) and an overall time limit, so a wrong
    endpoint or a missing bucket is reported in seconds. Local paths are not checked. gcsfs
    has no setting for its retries (about 30 s of back-off against a closed port): the time
    limit leaves its listing behind.
    """
    if not is_remote(location):
        return
    bounded("list", location, lambda: _list_bucket(os.fspath(location)), timeout_s)


def _list_bucket(location: str) -> None:
    try:
        fs, path = filesystem(location, skip_instance_cache=True,
                              **QUICK.get(scheme(location), {}))
        bucket = path.split("/", 1)[0]
        fs.ls(bucket, detail=False)
    except ImportError as exc:
        raise StorageError(f"{location}: {exc}") from None
    except FileNotFoundError:
        raise StorageError(f"{location}: the bucket does not exist ({endpoint_hint(location)})"
                           ) from None
    except PermissionError as exc:
        raise StorageError(f"{location}: access denied ({exc}); check the credentials "
                           "(environment, ~/.aws, GOOGLE_APPLICATION_CREDENTIALS)") from None
    except Exception as exc:  # noqa: BLE001 - every client library has its own errors
        raise StorageError(f"{location}: cannot reach the store ({type(exc).__name__}: "
                           f"{exc}; {endpoint_hint(location)})") from None


def endpoint_hint(location: str | os.PathLike) -> str:
    """Which endpoint a URL goes to (the name of the variable, never a credential)."""
    if scheme(location) in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return f"endpoint {endpoint} from AWS_ENDPOINT_URL" if endpoint else "endpoint: AWS"
    if scheme(location) in ("gs", "gcs"):
        endpoint = os.environ.get("STORAGE_EMULATOR_HOST")
        return (f"endpoint {endpoint} from STORAGE_EMULATOR_HOST" if endpoint
                else "endpoint: Google Cloud Storage")
    return f"scheme {scheme(location)}://"
