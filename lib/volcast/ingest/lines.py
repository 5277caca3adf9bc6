"""Physical lines of a CSV body: their spans, and their count, found apart from the CSV parser."""
from __future__ import annotations

import numpy as np


def _all_line_spans(body: bytes) -> np.ndarray:
    """[start, end) of every physical line, with Arrow's line ends: "\r\n", "\n" or a lone "\r"."""
    arr = np.frombuffer(body, dtype=np.uint8)
    if not len(arr):
        return np.zeros((0, 2), np.int64)
    cr = arr == 13
    lf = arr == 10
    next_lf = np.concatenate([lf[1:], [False]])
    prev_cr = np.concatenate([[False], cr[:-1]])
    term = np.flatnonzero(cr | (lf & ~prev_cr))  # where each line ending starts
    term_len = np.where(cr[term] & next_lf[term], 2, 1)
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
