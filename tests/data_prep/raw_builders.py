"""Small raw datasets in the official CIFAR-10 and CelebA layouts, built by the tests."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_MEMBERS = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses "
    "Goatee Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache "
    "Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks "
    "Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young").split()
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


def cifar_batches(per_batch: int = 4, n_test: int = 6, seed: int = 0,
                  bytes_keys: bool = True) -> dict[str, bytes]:
    """Pickled members in the official format: dicts with `data` uint8 [N, 3072], `labels`.

    The official files were pickled by Python 2, so their keys load as bytes; `bytes_keys`
    imitates that (False gives str keys, as a Python 3 re-pickle would).
    """
    rng = np.random.default_rng(seed)
    key = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    members = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)),
                    ("test_batch", n_test)]:
        batch = {key("batch_label"): key(name), key("labels"): rng.integers(0, 10, n).tolist(),
                 key("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key("filenames"): [key(f"img_{i}.png") for i in range(n)]}
        members[name] = pickle.dumps(batch, protocol=2)
    meta = {key("label_names"): [key(c) for c in CLASSES], key("num_vis"): 3072}
    members["batches.meta"] = pickle.dumps(meta, protocol=2)
    return members


def write_cifar_archive(path: Path, members: dict[str, bytes]) -> Path:
    """`cifar-10-python.tar.gz` with members under `cifar-10-batches-py/`, as the original."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_cifar_folder(folder: Path, members: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    return folder


def unpickle(data: bytes) -> dict:
    obj = pickle.loads(data, encoding="bytes")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def write_celeba(root: Path, partitions: list[int], size: tuple[int, int] = (178, 218),
                 seed: int = 0) -> Path:
    """`img_align_celeba/NNNNNN.jpg` (smooth random RGB JPEGs), `list_eval_partition.txt` and
    `list_attr_celeba.txt` (random -1/1 values, `celeba_flags(len(partitions), seed)`)."""
    rng = np.random.default_rng(seed)
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    lines = []
    for i, part in enumerate(partitions, start=1):
        coarse = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(
            images / f"{i:06d}.jpg", quality=90)
        lines.append(f"{i:06d}.jpg {part}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    write_celeba_attributes(root / "list_attr_celeba.txt", celeba_flags(len(partitions), seed))
    return root


def celeba_flags(n: int, seed: int = 0) -> np.ndarray:
    """The attributes `write_celeba` gives its n images: bool [n, 40]."""
    return np.random.default_rng([seed, 40]).random((n, len(CELEBA_ATTRIBUTES))) < 0.4


def write_celeba_attributes(path: Path, flags: np.ndarray) -> Path:
    """`list_attr_celeba.txt` as the official file lays it out: the count, the names (with a
    trailing space), then `NNNNNN.jpg` and the values right-aligned in 3 columns each."""
    rows = [f"{i:06d}.jpg" + "".join(f"{1 if f else -1:>3d}" for f in row)
            for i, row in enumerate(flags, start=1)]
    path.write_text(f"{len(flags)}\n{' '.join(CELEBA_ATTRIBUTES)} \n" + "\n".join(rows) + "\n")
    return path
