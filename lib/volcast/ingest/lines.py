"""Physical lines of a CSV body: their spans, and their count, found apart from the CSV parser."""

from __future__ import annotations

import numpy as np


def _all_line_spans(body) -> np.ndarray:
    """[start, end) of every physical line, with Arrow's line ends: "\r\n", "\n" or a lone "\r".
    Works on positions (one byte-sized temporary at a time), so memory stays near the body's size."""
    arr = np.frombuffer(body, dtype=np.uint8)
    if not len(arr):
        return np.zeros((0, 2), np.int64)
    term = np.flatnonzero(arr == 10)  # where each line ending starts
    term_len = np.ones(len(term), np.int64)
    cr = np.flatnonzero(arr == 13)
    if len(cr):
        crlf = cr[cr + 1 < len(arr)]
        crlf = crlf[arr[crlf + 1] == 10]
        term = np.union1d(cr, np.setdiff1d(term, crlf + 1, assume_unique=True))
        term_len = np.where(np.isin(term, crlf, assume_unique=True), 2, 1)
    starts = np.concatenate([[0], term + term_len])
    ends = np.concatenate([term, [len(arr)]])
    if starts[-1] == len(arr):  # the empty tail after the last line end is not a line
        starts, ends = starts[:-1], ends[:-1]
    return np.stack([starts, ends], axis=1)


def _line_spans(body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """0-based body line numbers of the non-blank lines (what Arrow counts as rows) and their spans."""
    spans = _all_line_spans(body)
    nonblank = np.flatnonzero(spans[:, 1] > spans[:, 0])
    return nonblank, spans[nonblank]


def count_lines(buf, start: int = 0, stop: int | None = None) -> int:
    """Physical lines of ``buf[start:stop]`` (bytes or bytearray): line ends counted byte by byte, the
    same ends as Arrow's ("\r\n", "\n", a lone "\r"); a last line without an end counts too."""
    stop = len(buf) if stop is None else stop
    if stop <= start:
        return 0
    arr = np.frombuffer(buf, np.uint8, stop - start, start)  # numpy's count is faster than bytes.count
    ends = int(np.count_nonzero(arr == 10))
    if buf.find(b"\r", start, stop) != -1:
        ends += int(np.count_nonzero(arr == 13)) - buf.count(b"\r\n", start, stop)
    last = buf[stop - 1]
    return ends + (0 if last in (10, 13) else 1)


def count_blank_lines(buf, start: int = 0, stop: int | None = None) -> int:
    """Empty physical lines of ``buf[start:stop]`` (the CSV reader skips them: they are no rows)."""
    stop = len(buf) if stop is None else stop
    spans = _all_line_spans(memoryview(buf)[start:stop])
    return int((spans[:, 1] == spans[:, 0]).sum())


def data_lines(
    buf,
    start: int = 0,
    stop: int | None = None,
    accounted: int | None = None,
    header: int = 1,
    counted: int | None = None,
) -> int:
    """Non-blank physical lines of a CSV file ``buf[start:stop]`` after its ``header`` line (0: a body).

    Counted apart from the CSV parser, to check that every line ended as a kept or a quarantined row.
    Blank lines are counted only when the cheap count differs from ``accounted`` (what the parser
    accounted for): a row lost always shows, since the parser cannot have accounted for more lines than
    the file has. ``counted``: ``count_lines`` of the same bytes, when already known.
    """
    total = (count_lines(buf, start, stop) if counted is None else counted) - header
    if total == accounted:
        return total
    return total - count_blank_lines(buf, start, stop)


def longest_line(buf, start: int = 0, stop: int | None = None) -> int:
    """Bytes in the longest physical line of ``buf[start:stop]`` (its line end not included)."""
    stop = len(buf) if stop is None else stop
    if stop <= start:
        return 0
    if buf.find(b"\r", start, stop) == -1:  # "\n" ends only: the gaps between them, in one pass
        ends = np.flatnonzero(np.frombuffer(buf, np.uint8, stop - start, start) == 10)
        return int(np.diff(ends, prepend=-1, append=stop - start).max()) - 1
    spans = _all_line_spans(memoryview(buf)[start:stop])
    return int((spans[:, 1] - spans[:, 0]).max()) if len(spans) else 0
