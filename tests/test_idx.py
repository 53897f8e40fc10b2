"""mnist_cnn.data.idx: the IDX format read within bounds, raw or gzip (one member or many)."""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest
from conftest import idx_bytes

from mnist_cnn.data import idx
from mnist_cnn.data.idx import CappedReader, Gunzip, parse_idx, read_file_bytes, read_idx_stream, sha256
from mnist_cnn.errors import MnistCnnError


def test_parse_idx_round_trips_an_array():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    parsed = parse_idx(idx_bytes(array), 3)
    assert parsed.shape == (2, 3, 4)
    assert np.array_equal(parsed, array)


def test_parse_idx_refuses_a_wrong_number_of_dimensions():
    raw = idx_bytes(np.zeros((2, 3), dtype=np.uint8))
    with pytest.raises(MnistCnnError, match=r"x: wrong magic number 0x00000802: expected 0x00000803"):
        parse_idx(raw, 3, "x")


@pytest.mark.parametrize(("raw", "message"), [
    (b"\x00\x00", "truncated: 2 bytes, too short for an IDX header"),
    (b"\x00\x00\x08\x01\x00\x00", "truncated: header needs 8 bytes, has 6"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01", r"truncated: dimensions \(3,\) need 11 bytes, file has 9"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", r"1 unexpected bytes after the \(1,\) items"),
])
def test_parse_idx_names_what_is_wrong(raw, message):
    with pytest.raises(MnistCnnError, match=message):
        parse_idx(raw, 1)


def test_parse_idx_refuses_implausible_dimensions():
    raw = struct.pack(">HBB3I", 0, 0x08, 3, 1, 0, 28)
    with pytest.raises(MnistCnnError, match="implausible dimensions"):
        parse_idx(raw, 3)


def test_capped_reader_stops_past_its_cap():
    reader = CappedReader(io.BytesIO(b"x" * 100), cap=10, source="s")
    assert reader.read(10) == b"x" * 10
    with pytest.raises(MnistCnnError, match="s: more than 10 bytes"):
        reader.read(10)


def test_gunzip_reads_many_members_as_one_stream():
    data = b"".join(gzip.compress(part) for part in (b"abc", b"", b"defg"))
    assert Gunzip(data).read(100) == b"abcdefg"


def test_gunzip_refuses_too_many_members(monkeypatch):
    monkeypatch.setattr(idx, "MAX_GZIP_MEMBERS", 3)
    data = b"".join(gzip.compress(b"a") for _ in range(5))
    with pytest.raises(MnistCnnError, match="more than 3 gzip members"):
        Gunzip(data, "g").read(100)


def test_read_idx_stream_reads_no_more_than_the_header_announces():
    raw = idx_bytes(np.ones((2, 2), dtype=np.uint8))
    assert read_idx_stream(io.BytesIO(raw), "s") == raw
    with pytest.raises(MnistCnnError, match="s: more than 16 bytes"):
        read_idx_stream(io.BytesIO(raw + b"trailing"), "s")


def test_read_idx_stream_refuses_a_header_announcing_more_than_the_cap():
    raw = struct.pack(">HBB2I", 0, 0x08, 2, 1000, 1000)
    with pytest.raises(MnistCnnError, match="announces 1,000,012 bytes"):
        read_idx_stream(io.BytesIO(raw), "s", cap=1000)


def test_read_file_bytes_reads_raw_and_gzip_alike(tmp_path):
    raw = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    (tmp_path / "plain").write_bytes(raw)
    (tmp_path / "packed").write_bytes(gzip.compress(raw))  # detected by magic, not by name
    assert read_file_bytes(tmp_path / "plain") == raw
    assert read_file_bytes(tmp_path / "packed") == raw


def test_read_file_bytes_says_corrupt_gzip_and_missing_files(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(MnistCnnError, match="corrupt or truncated gzip data"):
        read_file_bytes(tmp_path / "bad.gz")
    with pytest.raises(MnistCnnError, match="cannot read"):
        read_file_bytes(tmp_path / "missing")


def test_sha256_is_the_hex_digest():
    assert sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
