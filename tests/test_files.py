"""mnist_cnn.files: atomic writes, run folders checked, locked and cleaned."""

from __future__ import annotations

import os

import pytest

from mnist_cnn.errors import CannotWrite, MnistCnnError
from mnist_cnn.files import (
    LOCK_NAME,
    claim_run_folder,
    ensure_writable_folder,
    locked_folder,
    remove_stale_temps,
    write_atomically,
)


def test_write_atomically_creates_folders_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    write_atomically(target, b"one")
    write_atomically(target, b"two")
    assert target.read_bytes() == b"two"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_write_atomically_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    write_atomically(target, b"old")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_write_atomically_under_a_file_is_one_line(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(CannotWrite, match=r"plain/out: cannot write it \("):
        write_atomically(tmp_path / "plain" / "out", b"data")


def test_ensure_writable_folder_checks_space_and_kind(tmp_path):
    assert ensure_writable_folder(tmp_path / "new") == tmp_path / "new"
    assert list((tmp_path / "new").iterdir()) == []  # the probe is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(MnistCnnError, match="the output folder is not a folder"):
        ensure_writable_folder(tmp_path / "file")
    with pytest.raises(MnistCnnError, match="MiB free, the run needs about"):
        ensure_writable_folder(tmp_path, needed_bytes=2 ** 62)


def test_remove_stale_temps_removes_only_dotted_temporaries(tmp_path):
    (tmp_path / ".last.safetensors.abc.tmp").write_bytes(b"")
    (tmp_path / "keep.tmp").write_bytes(b"")
    removed = remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == [".last.safetensors.abc.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tmp"]


def test_locked_folder_refuses_a_second_holder_and_removes_its_lock(tmp_path):
    with locked_folder(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(MnistCnnError, match=rf"in use by another run \(process {os.getpid()}\)"):
            with locked_folder(tmp_path):
                pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_claim_run_folder_guards_a_finished_run(tmp_path):
    (tmp_path / "last.safetensors").write_bytes(b"")
    (tmp_path / ".x.1.tmp").write_bytes(b"")
    with pytest.raises(MnistCnnError, match=r"already holds a run \(last.safetensors\)"):
        with claim_run_folder(tmp_path, 0, "last.safetensors", replace=False):
            pass
    with claim_run_folder(tmp_path, 0, "last.safetensors", replace=True) as folder:
        assert folder == tmp_path
        assert not (tmp_path / ".x.1.tmp").exists()
