"""The IDX file format (MNIST's): a big-endian header, then the items, raw or gzip-compressed.

Reading is bounded: a header may not promise more than MAX_IDX_ITEMS items, and no file is read
or inflated past MAX_IDX_BYTES, so a small gzip "bomb" can never grow to gigabytes (the largest
MNIST-format file is 47 MB raw, 9.9 MB compressed).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import MnistCnnError

GZIP_MAGIC = b"\x1f\x8b"
IDX_DTYPE_UBYTE = 0x08
MAX_IDX_ITEMS = 10_000_000  # far above any MNIST-format file: refuses absurd headers early
MAX_IDX_BYTES = 128 * 2**20
CHUNK = 2**24  # bytes per read: few enough calls that each one is worth releasing the GIL for
FIRST_FEED = 256  # bytes of compressed input first given to zlib for each gzip member
# bgzip and pigz -i write a member per 64 KB block: 720 for the largest MNIST-format file
MAX_GZIP_MEMBERS = 10_000


def parse_idx(raw: bytes | bytearray, expected_ndim: int, source: str = "<bytes>") -> np.ndarray:
    """Parse one uncompressed IDX file of unsigned bytes; `source` names it in errors."""
    if len(raw) < 4:
        raise MnistCnnError(f"{source}: truncated: {len(raw)} bytes, too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != IDX_DTYPE_UBYTE or ndim != expected_ndim:
        raise MnistCnnError(
            f"{source}: wrong magic number 0x{raw[:4].hex()}: expected "
            f"0x0000{IDX_DTYPE_UBYTE:02x}{expected_ndim:02x} (unsigned bytes, {expected_ndim} dims)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise MnistCnnError(f"{source}: truncated: header needs {header_len} bytes, has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    if dims[0] > MAX_IDX_ITEMS or any(d == 0 or d > 4096 for d in dims[1:]):
        raise MnistCnnError(f"{source}: implausible dimensions {dims}")
    expected_len = header_len + int(np.prod(dims, dtype=np.int64))
    if len(raw) < expected_len:
        raise MnistCnnError(
            f"{source}: truncated: dimensions {dims} need {expected_len} bytes, file has {len(raw)}"
        )
    if len(raw) > expected_len:
        raise MnistCnnError(
            f"{source}: {len(raw) - expected_len} unexpected bytes after the {dims} items"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


class Readable(Protocol):
    """What is read here: a stream of bytes read `size` at a time (a file, a response, a
    decompressor), never seeked."""

    def read(self, size: int, /) -> bytes: ...


class CappedReader:
    """A stream that raises MnistCnnError rather than read more than `cap` bytes in all."""

    def __init__(self, stream: Readable, cap: int, source: str, already_read: int = 0) -> None:
        self.stream, self.cap, self.source, self.total = stream, cap, source, already_read

    def read(self, size: int = -1) -> bytes:
        room = self.cap - self.total + 1  # one byte more than allowed: so that excess shows
        data = self.stream.read(room if size < 0 else min(size, room))
        self.total += len(data)
        if self.total > self.cap:
            raise MnistCnnError(f"{self.source}: more than {self.cap:,} bytes (damaged, or a "
                                "decompression bomb); stopped reading")
        return data


class Gunzip:
    """Decompresses gzip data (one member or several) as it is read.

    Each read is one zlib call, which releases the GIL for its whole length. gzip.GzipFile
    inflates 8 KB of input per call instead, about 1,500 calls for the training images, and with
    another thread running (a server's, a test's) every call waits to get the GIL back: that made
    loading 4 times slower.

    Input is given to zlib in pieces that start small and double while a member lasts: zlib
    copies what follows a member's end (its unused_data), so feeding all the rest at once made
    a file of many tiny members take quadratic time (500,000 empty ones: 100 s). At most
    MAX_GZIP_MEMBERS members are read.
    """

    def __init__(self, compressed: bytes, source: str = "gzip data") -> None:
        self.data, self.source = memoryview(compressed), source
        self.offset = 0  # input given to zlib so far
        self.pending = b""  # input given to zlib that belongs to the next member
        self.members = 0
        self.start_member()

    def start_member(self) -> None:
        self.members += 1
        if self.members > MAX_GZIP_MEMBERS:
            raise MnistCnnError(f"{self.source}: more than {MAX_GZIP_MEMBERS:,} gzip members "
                                "(damaged, or not an MNIST-format file); stopped reading")
        self.inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
        self.feed = FIRST_FEED

    def next_input(self) -> memoryview:
        piece = self.data[self.offset:self.offset + self.feed]
        self.offset += len(piece)
        self.feed = min(2 * self.feed, CHUNK)
        return piece

    def read(self, size: int) -> bytes:
        parts, left = [], size
        while left > 0:
            if self.inflater.eof:
                self.pending = self.inflater.unused_data  # at most one piece of input
                if not self.pending and self.offset == len(self.data):
                    break  # the last member ended
                self.start_member()
            source = self.inflater.unconsumed_tail or self.pending or self.next_input()
            self.pending = b""
            if not source:
                raise EOFError("the compressed data ends before its end-of-stream marker")
            parts.append(self.inflater.decompress(source, left))
            left -= len(parts[-1])
        return b"".join(parts)


def read_idx_stream(stream: Readable, source: str, cap: int = MAX_IDX_BYTES) -> bytearray:
    """Read one IDX file from a (perhaps decompressing) stream, never past the size its header
    announces, nor past `cap` when the header is not a valid one (parse_idx then says why)."""
    head = stream.read(4)
    limit = cap
    if len(head) == 4:
        zero, dtype, ndim = struct.unpack(">HBB", head)
        if zero == 0 and dtype == IDX_DTYPE_UBYTE and 1 <= ndim <= 4:
            head += stream.read(4 * ndim)
            if len(head) == 4 + 4 * ndim:
                dims = struct.unpack(f">{ndim}I", head[4:])
                size = len(head) + math.prod(dims)
                if size > cap:
                    raise MnistCnnError(f"{source}: its header announces {size:,} bytes "
                                        f"(dimensions {dims}), more than the {cap:,} allowed")
                limit = size
    rest = CappedReader(stream, limit, source, already_read=len(head))
    # one growing, writable buffer: no join of the pieces, and the arrays parsed from it need no
    # copy of their own
    content = bytearray(head)
    while chunk := rest.read(CHUNK):
        content += chunk
    return content


def read_file_bytes(path: Path) -> bytearray:
    """The decompressed content of `path` (gzip detected by its magic bytes, not its name),
    decompressed incrementally and never past what the IDX header announces."""
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
            f.seek(0)
            if not compressed:
                return read_idx_stream(f, str(path))
            if os.fstat(f.fileno()).st_size > MAX_IDX_BYTES:  # compression never enlarges them
                raise MnistCnnError(f"{path}: over {MAX_IDX_BYTES:,} bytes compressed: not an "
                                    "MNIST-format file")
            try:
                return read_idx_stream(Gunzip(f.read(), str(path)), str(path))
            except (EOFError, zlib.error) as e:
                raise MnistCnnError(f"{path}: corrupt or truncated gzip data ({e})") from None
    except OSError as e:
        raise MnistCnnError(f"{path}: cannot read: {e.strerror or e}") from None


def sha256(raw: bytes | bytearray) -> str:
    return hashlib.sha256(raw).hexdigest()
