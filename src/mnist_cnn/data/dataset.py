"""MNIST-format datasets in memory: verified uint8 tensors, split into train, validation, test.

Data flows one way: files found by sources.py (gzip or raw IDX, read by idx.py) -> checked
against their pinned SHA-256 -> uint8 tensors held in memory -> `Dataset`. A gzip file's checked
content is also kept decompressed in the cache folder, which later loads read instead (a tenth
of the time: reading and hashing 55 MB against inflating it), still checking its SHA-256.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import MnistCnnError
from ..files import write_atomically
from .idx import GZIP_MAGIC, parse_idx, read_file_bytes, sha256
from .sources import (
    FILES,
    VALIDATION_SIZE,
    DatasetInfo,
    cache_dir,
    dataset_info,
    find_files,
    locate,
)


@dataclass
class Split:
    """Images as uint8 (N, 1, 28, 28) and labels as int64 (N,); float only per batch."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    checksums: dict[str, str] = field(default_factory=dict)
    source: str = ""


def load_directory(directory: Path, info: DatasetInfo, verify: bool = True) -> dict[str, np.ndarray]:
    """Read and validate the four files of `info` from `directory`."""
    paths = find_files(directory)
    if paths is None:
        missing = [s for s in FILES.values()
                   if not (directory / s).is_file() and not (directory / f"{s}.gz").is_file()]
        raise MnistCnnError(f"{directory}: missing {', '.join(missing)} (raw or .gz)")
    arrays = {}
    for key, stem in FILES.items():
        raw = read_decoded_copy(paths[stem], info, stem) if verify else None
        if raw is None:
            raw = read_file_bytes(paths[stem])
            if verify and sha256(raw) != info.sha256[stem]:
                raise MnistCnnError(
                    f"{paths[stem]}: checksum mismatch: the decompressed content's SHA-256 is "
                    f"{sha256(raw)}, expected {info.sha256[stem]} for {info.name}"
                )
            if verify:
                keep_decoded_copy(paths[stem], info, stem, raw)
        arrays[key] = parse_idx(raw, 3 if key.endswith("images") else 1, str(paths[stem]))
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[1:] != (28, 28):
            raise MnistCnnError(f"{paths[FILES[split + '_images']]}: images are "
                                f"{images.shape[1]}x{images.shape[2]}, expected 28x28")
        if len(images) != len(labels):
            raise MnistCnnError(
                f"{directory}: {split} label file has {len(labels)} items but the image file has "
                f"{len(images)}"
            )
        if verify and len(images) != info.counts[split]:
            raise MnistCnnError(
                f"{directory}: wrong count: {split} has {len(images)} items, expected "
                f"{info.counts[split]}"
            )
        if labels.size and labels.max() >= len(info.classes):
            raise MnistCnnError(f"{paths[FILES[split + '_labels']]}: label {labels.max()} out of range")
    return arrays


def decoded_copy_path(path: Path, info: DatasetInfo, stem: str) -> Path | None:
    """Where the checked content of the gzip file `path` is kept decompressed (None for a raw
    file): named after the file's place, size and modification time, so that a changed or
    replaced file is read and checked again."""
    try:
        with path.open("rb") as f:
            if f.read(2) != GZIP_MAGIC:
                return None
        stat = path.stat()
        identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return None
    return cache_dir(info.name) / "decoded" / f"{stem}.{sha256(identity.encode())[:16]}"


def read_decoded_copy(path: Path, info: DatasetInfo, stem: str) -> bytearray | None:
    """The kept decompressed content of `path`, if there is one and it passes the SHA-256 check
    (a damaged copy is None: the gzip file is read again, and the copy rewritten)."""
    copy = decoded_copy_path(path, info, stem)
    try:
        if copy is None or not copy.is_file():
            return None
        with copy.open("rb") as f:
            raw = bytearray(os.fstat(f.fileno()).st_size)  # writable: the arrays use it in place
            if f.readinto(raw) != len(raw):
                return None
    except OSError:
        return None
    return raw if sha256(raw) == info.sha256[stem] else None


def keep_decoded_copy(path: Path, info: DatasetInfo, stem: str, raw: bytearray) -> None:
    """Keep the checked content of `path` decompressed, in place of older copies. Only a
    shortcut: when it cannot be written (a read-only or full disk), loading is just slower."""
    copy = decoded_copy_path(path, info, stem)
    if copy is None:
        return
    with contextlib.suppress(MnistCnnError, OSError):
        for old in copy.parent.glob(f"{stem}.*"):
            old.unlink()
        write_atomically(copy, raw)


def make_dataset(arrays: dict[str, np.ndarray], info: DatasetInfo, source: str,
                 val_size: int = VALIDATION_SIZE) -> Dataset:
    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        # arrays over a writable buffer are used in place (a copy of 55 MB costs a quarter second)
        return Split(torch.from_numpy(images if images.flags.writeable else images.copy()
                                      ).unsqueeze(1),
                     torch.from_numpy(labels.astype(np.int64)))

    train_x, train_y = arrays["train_images"], arrays["train_labels"]
    if not 0 <= val_size < len(train_x):
        raise MnistCnnError(f"{info.name}: cannot hold out {val_size:,} of its {len(train_x):,} "
                            "training images for validation")
    return Dataset(
        name=info.name,
        train=split(train_x[val_size:], train_y[val_size:]),
        val=split(train_x[:val_size], train_y[:val_size]),
        test=split(arrays["test_images"], arrays["test_labels"]),
        classes=info.classes,
        checksums=dict(info.sha256),
        source=source,
    )


def load_dataset(name: str = "mnist", data_dir: str | os.PathLike | None = None,
                 download: bool = True, val_size: int = VALIDATION_SIZE) -> Dataset:
    """Find, verify and load a dataset into memory: 55k train / 5k validation / 10k test."""
    directory = locate(name, data_dir, download)
    info = dataset_info(name)
    return make_dataset(load_directory(directory, info), info, str(directory), val_size)
