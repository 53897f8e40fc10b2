"""Writing files so that an interruption never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import CannotWrite, MnistCnnError


def write_atomically(path: str | os.PathLike, data: bytes | bytearray) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`.

    A failure (a full disk, a read-only folder) is one line naming the file and the cause; the
    file already at `path`, if any, is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise CannotWrite(f"{path}: cannot write it ({_one_line(e)})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are ordinary data files
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CannotWrite(f"{path}: cannot write it ({_one_line(e)})") from None
        raise


# --------------------------------------------------------------------------------------------
# Run folders: checked before the work starts, so that a run never fails only at its first save


LOCK_NAME = ".lock"
PROBE_PREFIX = ".probe."


def _one_line(e: OSError) -> str:
    return e.strerror or str(e)


def ensure_writable_folder(folder: str | os.PathLike, needed_bytes: int = 0,
                           what: str = "output folder") -> Path:
    """Create `folder`, prove it writable with a probe file, and check its free space."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MnistCnnError(f"{folder}: the {what} is not a folder (a file has that name, or "
                            "is in its path)") from None
    except OSError as e:
        raise MnistCnnError(f"{folder}: cannot create the {what} ({_one_line(e)})") from None
    try:
        # a named file, as atomic writes make them; a leftover from a kill is a stale .*.tmp
        with tempfile.NamedTemporaryFile(dir=folder, prefix=PROBE_PREFIX, suffix=".tmp") as probe:
            probe.write(b"probe")
            probe.flush()
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise MnistCnnError(f"{folder}: the {what} is not writable ({_one_line(e)})") from None
    if free < needed_bytes:
        raise MnistCnnError(f"{folder}: only {free / 2**20:,.1f} MiB free, the run needs about "
                            f"{needed_bytes / 2**20:,.1f} MiB; free some space or choose "
                            "another folder")
    return folder


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the `.NAME.XXXX.tmp` files that killed atomic writes left in `folder`.

    Only call this while holding the folder's lock: then no live writer can own one of them.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive flock on FOLDER/.lock: a second run on the folder is refused.

    The kernel drops flock locks when their file closes, so a killed run (even kill -9) never
    leaves the folder locked, only a harmless .lock file; a run that ends normally removes it.
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise MnistCnnError(f"{path}: cannot create the lock file ({_one_line(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise MnistCnnError(
                f"{folder} is in use by another run{f' (process {holder})' if holder else ''}; "
                "wait for it to finish or choose another folder") from None
        # a run ending between our open and our flock removes the file: our lock is then on an
        # orphan, and a third run could lock a new .lock; start again on the current file
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # only for the message above
        yield folder
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked, so that no other run holds this inode
        os.close(fd)


@contextlib.contextmanager
def claim_run_folder(folder: str | os.PathLike, needed_bytes: int, guarded: str,
                     replace: bool) -> Iterator[Path]:
    """Prepare `folder` for a run and hold it while the run lasts.

    The folder is created and checked writable, with `needed_bytes` free; it is locked against
    other runs; a `guarded` file already there (another run's result) is refused unless `replace`;
    stale temporary files are removed.
    """
    folder = ensure_writable_folder(folder, needed_bytes)
    with locked_folder(folder):
        if not replace and (folder / guarded).exists():
            raise MnistCnnError(
                f"{folder} already holds a run ({guarded}); continue it with --resume, replace it "
                "with --overwrite, or choose another --out")
        remove_stale_temps(folder)
        yield folder
