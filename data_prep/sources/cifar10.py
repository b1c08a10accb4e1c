"""CIFAR-10 from the official python archive: 50,000 train / 10,000 test, 32x32x3, 8-bit.

Reads `cifar-10-python.tar.gz` or its extracted `cifar-10-batches-py/` folder: pickled dicts
with `data` (uint8 [N, 3072], channel-major: 1024 red, 1024 green, 1024 blue) and `labels`.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from data_prep import storage
from data_prep.config import DataPrepConfig
from data_prep.errors import DataPrepError
from data_prep.sources import Sample, Source, split_indices

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
MEMBERS = [*TRAIN_BATCHES, "test_batch", "batches.meta"]


def open_cifar10(cfg: DataPrepConfig) -> Source:
    """Load both official splits (val carved from train by seed when asked)."""
    location, is_archive = _locate(cfg)
    raw = _read_archive(location) if is_archive else _read_folder(location)
    digest = hashlib.sha256()
    for name in MEMBERS:  # content only: the archive and its extracted folder agree
        digest.update(name.encode() + hashlib.sha256(raw[name]).digest())
    train_x, train_y = _concat([_load_batch(raw, name, location) for name in TRAIN_BATCHES])
    test_x, test_y = _load_batch(raw, "test_batch", location)
    classes = _load_classes(raw, location)
    del raw

    parts = split_indices(len(train_x), cfg.seed, {"val": cfg.val_fraction})
    arrays = {"train": (train_x, train_y), "test": (test_x, test_y)}

    def read_range(split: str, start: int, stop: int) -> Iterator[Sample]:
        origin = "test" if split == "test" else "train"
        x, y = arrays[origin]
        indices = range(len(x)) if split == "test" else parts[split]
        for i in indices[start:stop]:
            yield f"{origin}{i:05d}", x[i], int(y[i]), None

    counts = {"train": len(parts["train"])}
    if "val" in parts:
        counts["val"] = len(parts["val"])
    counts["test"] = len(test_x)
    return Source("cifar10", (3, 32, 32), 256, digest.hexdigest(), counts, read_range, classes)


def _missing_message(where: str, archive: str) -> str:
    folder = storage.join(storage.parent(archive), FOLDER)
    return (
        f"CIFAR-10 not found at {where}. Download {URL} (163 MB, md5 {MD5}) and save it as "
        f"{archive} (or extract it there so that {folder}/data_batch_1 exists), "
        "then run again; on a machine with network access you may set data_prep.download: true "
        "instead."
    )


def _locate(cfg: DataPrepConfig) -> tuple[str, bool]:
    """(location, is it the archive) of what `cfg.source` points at (or into): the archive
    file or the extracted folder, on a local disk or an object store."""
    if cfg.source is None:
        if cfg.download:
            return str(_download(Path("data/raw") / ARCHIVE)), True
        raise DataPrepError(
            f"data_prep.source is not set for cifar10. Download {URL} (163 MB, md5 {MD5}), save "
            f"it as data/raw/{ARCHIVE} and set data_prep.source: data/raw/{ARCHIVE} (or set "
            "data_prep.download: true on a machine with network access)."
        )
    source = str(cfg.source).rstrip("/")
    if storage.is_file(source):
        return source, True
    if storage.is_dir(source):
        for candidate in (source, storage.join(source, FOLDER)):
            if any(storage.exists(storage.join(candidate, member))
                   for member in ("data_batch_1", "test_batch")):
                return candidate, False
        if storage.is_file(storage.join(source, ARCHIVE)):
            return storage.join(source, ARCHIVE), True
    archive = source if source.endswith((".tar.gz", ".tgz", ".tar")) else storage.join(
        source, ARCHIVE)
    if storage.name_of(source) == FOLDER:
        archive = storage.join(storage.parent(source), ARCHIVE)
    if cfg.download and not storage.is_remote(archive):
        return str(_download(storage.local_path(archive))), True
    raise DataPrepError(_missing_message(source, archive))


def _download(target: Path) -> Path:
    """Fetch the official archive to `target` (temporary name, md5 check, rename)."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        urllib.request.urlretrieve(URL, tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataPrepError(f"could not download {URL} ({exc}). " + _missing_message(
            str(target), str(target))) from None
    md5 = hashlib.md5(tmp.read_bytes()).hexdigest()
    if md5 != MD5:
        tmp.unlink()
        raise DataPrepError(f"downloaded {URL} has md5 {md5}, expected {MD5}; try again")
    tmp.replace(target)
    return target


def _read_archive(location: str) -> dict[str, bytes]:
    """The batch files inside the archive, by base name."""
    found: dict[str, bytes] = {}
    try:
        with _open_tar(location) as tar:
            for info in tar:
                name = PurePosixPath(info.name).name
                if info.isfile() and name in MEMBERS and name not in found:
                    found[name] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataPrepError(
            f"{location}: truncated or corrupt CIFAR-10 archive ({exc}). Delete it and download "
            f"it again from {URL}"
        ) from None
    missing = [name for name in MEMBERS if name not in found]
    if missing:
        raise DataPrepError(
            f"{location}: not the official CIFAR-10 python archive: it lacks "
            f"{', '.join(missing)}. Download it again from {URL}"
        )
    return found


def _open_tar(location: str) -> tarfile.TarFile:
    """The archive from the local disk, or read whole from an object store."""
    if storage.is_remote(location):
        return tarfile.open(fileobj=io.BytesIO(storage.read_bytes(location)), mode="r:*")
    return tarfile.open(storage.local_path(location), "r:*")


def _read_folder(folder: str) -> dict[str, bytes]:
    """The batch files of an extracted `cifar-10-batches-py/` folder."""
    missing = [name for name in MEMBERS if not storage.is_file(storage.join(folder, name))]
    if missing:
        raise DataPrepError(
            f"{folder}: incomplete CIFAR-10 folder: missing {', '.join(missing)}. Extract the "
            f"whole official archive ({URL}) here, or point data_prep.source at the archive"
        )
    return {name: storage.read_bytes(storage.join(folder, name)) for name in MEMBERS}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the batch dicts but refuses any class except numpy arrays (no code runs)."""

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # bytes in protocol-2 pickles written by Python 3

    def find_class(self, module: str, name: str):
        module = module.replace("numpy.core", "numpy._core")  # pickled under numpy 1.x
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(raw: dict[str, bytes], name: str, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw[name]), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a damaged file
        raise DataPrepError(
            f"{where}: {name} is not a CIFAR-10 batch ({type(exc).__name__}: {exc}). Download "
            f"the archive again from {URL}"
        ) from None
    if not isinstance(obj, dict):
        raise DataPrepError(f"{where}: {name} holds a {type(obj).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _load_batch(raw: dict[str, bytes], name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of one batch file, checked."""
    batch = _unpickle(raw, name, where)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        got = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else repr(
            type(data).__name__)
        raise DataPrepError(
            f"{where}: {name}['data'] must be uint8 [N, 3072] (32x32x3 images), got {got}"
        )
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or (labels.size and not 0 <= labels.min() <= labels.max() < 10):
        raise DataPrepError(
            f"{where}: {name}['labels'] must be {len(data)} class indices in 0..9"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW rows -> HWC
    return np.ascontiguousarray(images), labels


def _load_classes(raw: dict[str, bytes], where: str) -> list[str]:
    names = _unpickle(raw, "batches.meta", where).get("label_names", [])
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _concat(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])

