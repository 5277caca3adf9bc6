"""Reading source files: zip members, and a batch of plain files straight into one reused, joined buffer;
a folder's file is opened only if it is still a regular file within the limits (no link, FIFO or device)."""

from __future__ import annotations

import errno
import os
import stat
import zipfile

import pyarrow as pa
from isal.isal_zlib import crc32  # zlib's CRC-32 with the same values, faster (ISA-L)

from .batch import _SEPARATOR, BATCH_BYTES, CANONICAL_HEADER, _parse_joined, _plain
from .limits import DEFAULT_LIMITS, Limits, Refused, file_problem
from .lines import count_lines, data_lines, longest_line
from .parse import ParsedFile

_ZIPS: dict[str, zipfile.ZipFile] = {}


def _read_zip_member(source_path: str, rel: str) -> bytes:
    """A member of a zip source (directory sources are read by ``_JoinedBodies``)."""
    zf = _ZIPS.get(source_path)
    if zf is None:
        zf = _ZIPS[source_path] = zipfile.ZipFile(source_path)
    return zf.read(rel)


class _JoinedBodies:
    """A batch's plain CSV files read straight into one buffer, reused batch after batch, already joined
    the way ``parse_csv_batch`` joins them: no bytes object per file and no joined copy.

    Files not plain enough for the joint read (``_batch_body``'s rules) are returned as bytes instead.
    A bytes object per file costs fresh pages each time; the reused buffer does not, and the join's copy
    is gone too (measurements: README, Performance).
    """

    _HEADER = len(CANONICAL_HEADER)

    def __init__(self) -> None:
        self.buffer = bytearray(BATCH_BYTES + (1 << 20))
        self.end = 0
        self.spans: list[tuple[int, int]] = []  # each appended body's [start, stop) in the buffer
        self.counts: list[int] = []  # each appended body's physical lines, counted as it was read

    def clear(self) -> None:
        self.end, self.spans, self.counts = 0, [], []

    def read(self, path: str, limits: Limits = DEFAULT_LIMITS) -> tuple[int, bytes | None]:
        """Append the file's body (the result is ``(crc32 of the whole file, None)``), or return
        ``(crc32, the file's bytes)`` when it must be parsed alone. The caller clears it after each batch;
        a body that does not fit grows the buffer (once or twice per process: it stays grown).
        Raises ``Refused`` for what ``_open_regular`` refuses."""
        fd, size = _open_regular(path, limits)
        try:
            if self.end + size + len(_SEPARATOR) > len(self.buffer):
                bigger = bytearray(self.end + size + len(_SEPARATOR) + (1 << 20))
                bigger[: self.end] = memoryview(self.buffer)[: self.end]
                self.buffer = bigger
            header = os.pread(fd, self._HEADER, 0)
            if header != CANONICAL_HEADER or size == self._HEADER:
                data = header + _read_rest(fd, self._HEADER, limits.max_file_bytes)
                return crc32(data), data
            start = self.end
            view = memoryview(self.buffer)
            n = os.preadv(fd, [view[start : start + size - self._HEADER]], self._HEADER)
            stop = start + n
            crc = crc32(view[start:stop], crc32(header))
            changed = n < size - self._HEADER or os.pread(fd, 1, self._HEADER + n)  # shrank or grew meanwhile
            limit = limits.max_line_bytes
            too_long = stop - start > limit and longest_line(self.buffer, start, stop) > limit
            if changed or too_long or not _plain(self.buffer, start, stop):
                rest = _read_rest(fd, self._HEADER + n, limits.max_file_bytes - self._HEADER - n)
                data = header + view[start:stop].tobytes() + rest
                return crc32(data), data
            view[stop : stop + len(_SEPARATOR)] = _SEPARATOR
            del view
            self.end = stop + len(_SEPARATOR)
            self.spans.append((start, stop))
            self.counts.append(count_lines(self.buffer, start, stop))  # now, while the bytes are in cache
            return crc, None
        finally:
            os.close(fd)

    def lines(self, k: int, accounted: int) -> int:
        """The k-th body's non-blank lines, counted apart from the parser (see ``lines.data_lines``)."""
        start, stop = self.spans[k]
        return data_lines(self.buffer, start, stop, accounted, header=0, counted=self.counts[k])

    def body(self, k: int) -> bytes:
        """The whole file of the k-th appended body, for the file-by-file parser."""
        start, stop = self.spans[k]
        return CANONICAL_HEADER + bytes(self.buffer[start:stop])

    def parse(self, tickers: list[tuple[str, str | None]]) -> list[ParsedFile | None]:
        if not self.spans:
            return []
        return _parse_joined(pa.py_buffer(memoryview(self.buffer)[: self.end]), tickers, ticker_columns=False)


def _open_regular(path: str, limits: Limits) -> tuple[int, int]:
    """Open a source file for reading: (descriptor, size). Refuses (``Refused``) what is not a regular
    file, a symbolic link unless ``limits.allow_links`` (the scan checked where allowed links point), and
    a file over ``max_file_bytes``: the scan checked these, but the folder may have changed since."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if limits.allow_links else os.O_NOFOLLOW)  # a FIFO must not block
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("symbolic link (refused; allow_links=True reads links that stay inside the source)") from None
        raise
    st = os.fstat(fd)
    problem = None if stat.S_ISREG(st.st_mode) else "not a regular file"
    problem = problem or file_problem(st.st_size, limits)
    if problem:
        os.close(fd)
        raise Refused(problem)
    return fd, st.st_size


def _read_rest(fd: int, offset: int, limit: int) -> bytes:
    """The file from ``offset`` on; ``Refused`` past ``limit`` more bytes (a file that grows while read)."""
    chunks, total = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
        total += len(chunk)
        if total > limit:
            raise Refused("file grew past the limit max_file_bytes while it was read")
    return b"".join(chunks)
