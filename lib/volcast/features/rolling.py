"""Exact rolling kernels for the two task columns, on sorted columns (each ticker's rows contiguous,
in date order; ``starts`` = first row of each ticker).

Whole-column kernels run over all tickers at once and each row's window start is clipped at its
ticker's first row. The mean is a difference of int64 prefix sums (Volume is an integer), so it is
exact with no floating drift however long the column; the median is bottleneck's exact
``move_median`` over the whole column, and the few rows whose window would reach into the previous
ticker are recomputed from their own rows. Offset windows use the same prefix sums for the mean and
an exact chunked median of each row's (at most a few dozen) rows.
"""

from __future__ import annotations

import bottleneck as bn
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .window import WindowSpec

_RAGGED_BUDGET = 1 << 22  # cells (32 MiB of float64) per block of the ragged-window median


def _lengths(starts: np.ndarray, n: int) -> np.ndarray:
    return np.diff(np.append(starts, n))


def _positions(starts: np.ndarray, n: int) -> np.ndarray:
    """Each row's index within its ticker (0 for the ticker's first row)."""
    return np.arange(n, dtype=np.int64) - np.repeat(starts, _lengths(starts, n))


def _head_rows(starts: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` rows of every ticker (fewer if it is shorter) and their positions in it.

    Only these rows have a row window cut at the ticker's first row: a small set (tickers x k).
    """
    take = np.minimum(_lengths(starts, n), k)
    total = int(take.sum())
    pos = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(take) - take, take)
    return np.repeat(starts, take) + pos, pos


def _offset_window_starts(ticks: np.ndarray, starts: np.ndarray, span: int) -> np.ndarray:
    """First row of each row's window ``(t - span, t]`` (pandas' closed='right'), within its ticker."""
    n = len(ticks)
    lo = np.empty(n, dtype=np.int64)
    ends = np.append(starts[1:], n)
    # One searchsorted per ticker: a few thousand calls, each over one ticker's sorted dates.
    for s, e in zip(starts.tolist(), ends.tolist()):
        seg = ticks[s:e]
        lo[s:e] = s + np.searchsorted(seg, seg - span, side="right")
    return lo


def _valid_counts(x: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Number of non-missing values in each row's window [lo, i]."""
    idx1 = np.arange(1, len(x) + 1, dtype=np.int64)
    if x.dtype.kind == "f" and bn.anynan(x):
        cm = np.zeros(len(x) + 1, dtype=np.int64)
        np.cumsum(np.isnan(x), out=cm[1:])
        return idx1 - lo - (cm[1:] - cm[lo])
    return idx1 - lo


def _exact_ints(v: np.ndarray, width: int) -> np.ndarray | None:
    """``v`` as int64 (missing -> 0) when it holds whole numbers whose window sums stay exact, else None.

    Integer prefix sums make every window sum exact however long the column (no floating drift),
    so the mean is the correctly rounded quotient: bit-identical to pandas, whose compensated float
    sums of whole numbers are exact too.
    """
    if not len(v):
        return v.astype(np.int64)
    if v.dtype.kind != "i":
        missing = np.isnan(v) if bn.anynan(v) else None
        filled = v if missing is None else np.where(missing, 0.0, v)
        if not np.all(np.floor(filled) == filled):  # fractions (or inf)
            return None
        v = filled.astype(np.int64)
    peak = float(max(abs(int(v.max())), abs(int(v.min()))))
    # Prefix sums must not overflow int64 and each window sum must convert to float64 exactly.
    return v if peak * len(v) < 2.0**62 and peak * width < 2.0**53 else None


def _median_sorted(block: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Median of each row's ``valid`` non-NaN values (NaN sorts last): (a + b) / 2 as pandas does."""
    block.sort(axis=1)
    row = np.arange(len(block))
    return (block[row, np.maximum((valid - 1) // 2, 0)] + block[row, np.maximum(valid // 2, 0)]) / 2


def _sum_block(block: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.nansum(block, axis=1)


def _reduce_windows(x: np.ndarray, rows: np.ndarray, lengths: np.ndarray, valid: np.ndarray, reduce) -> np.ndarray:
    """``reduce`` over the windows ``x[rows - lengths + 1 .. rows]``, one bounded block at a time.

    Each block row is a copy of a sliding-window view, cells before the window set to NaN; exact
    (a sort or a plain sum per window, no running state).
    """
    out = np.empty(len(rows), dtype=np.float64)
    if not len(rows):
        return out
    x = np.asarray(x, dtype=np.float64)
    width = int(lengths.max())
    early = int(np.searchsorted(rows, width - 1))
    if early:  # windows that would start before x[0]: read them from a NaN-padded copy of the head
        head = np.concatenate([np.full(width - 1, np.nan), x[: width - 1]])
        out[:early] = _reduce_windows(head, rows[:early] + width - 1, lengths[:early], valid[:early], reduce)
    view = sliding_window_view(x, width)  # view[i - width + 1] = x[i - width + 1 .. i]
    behind = np.arange(width - 1, -1, -1)  # how many rows column j lies behind the window's last row
    step = max(1, _RAGGED_BUDGET // width)
    for s in range(early, len(rows), step):
        r = rows[s : s + step] - (width - 1)
        outside = behind >= lengths[s : s + step, None]
        if r[-1] - r[0] == len(r) - 1:  # contiguous rows: one masked copy of a slice (fast)
            block = np.where(outside, np.nan, view[r[0] : r[-1] + 1])
        else:  # scattered rows (a few near ticker starts): gather, then mask
            block = view[r]
            block[outside] = np.nan
        out[s : s + step] = reduce(block, valid[s : s + step])
    return out


def _window_mean(v: np.ndarray, lo: np.ndarray, min_periods: int) -> np.ndarray:
    """Mean over [lo[i], i] for any window starts (offset windows; columns with missing values)."""
    n = len(v)
    idx1 = np.arange(1, n + 1, dtype=np.int64)
    count = _valid_counts(v, lo)
    vi = _exact_ints(v, int((idx1 - lo).max()) if n else 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if vi is not None:
            prefix = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(vi, out=prefix[1:])
            out = (prefix[1:] - prefix[lo]) / count
        else:  # fractional volumes: sum each window on its own (no running sum, so no drift)
            out = _reduce_windows(v, np.arange(n, dtype=np.int64), idx1 - lo, count, _sum_block) / count
    out[count < min_periods] = np.nan
    return out


def _offset_median(a: np.ndarray, lo: np.ndarray, min_periods: int) -> np.ndarray:
    n = len(a)
    count = _valid_counts(a, lo)
    rows = np.arange(n, dtype=np.int64)  # all rows: contiguous blocks copy fast; mask afterwards
    out = _reduce_windows(a, rows, rows + 1 - lo, count, _median_sorted)
    out[count < min_periods] = np.nan
    return out


def _row_window_features(starts: np.ndarray, v: np.ndarray, a: np.ndarray, w: int, m: int):
    """Row windows: whole-column kernels, then fix the few rows near each ticker's start."""
    n = len(v)
    a = np.ascontiguousarray(a, dtype=np.float64)
    vi = _exact_ints(v, w)
    if vi is None or bn.anynan(a) or (v.dtype.kind == "f" and bn.anynan(v)):
        # Missing values or fractional volumes: the general path, explicit window starts and counts.
        lo = np.arange(n, dtype=np.int64) - np.minimum(_positions(starts, n), w - 1)
        count = _valid_counts(a, lo)
        keep = count >= m
        med = bn.move_median(a, min(w, n), min_count=1) if n else np.empty(0)  # n < w: all head rows
        head, _ = _head_rows(starts, n, w - 1)
        cut = head[keep[head]]
        med[cut] = _reduce_windows(a, cut, cut + 1 - lo[cut], count[cut], _median_sorted)
        med[~keep] = np.nan
        return _window_mean(v, lo, m), med
    # Dense columns (the raw contract): every window of w rows inside one ticker is a plain slice.
    head, pos = _head_rows(starts, n, w - 1)
    prefix = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(vi, out=prefix[1:])
    vol = np.empty(n, dtype=np.float64)
    med = bn.move_median(a, w) if n >= w else np.full(n, np.nan)
    if n >= w:
        # Integer differences cast into the float output as they are made (no temporary column),
        # exact: each window sum is below 2**53 (checked in _exact_ints).
        np.subtract(prefix[w:], prefix[:-w], out=vol[w - 1 :])
        vol[w - 1 :] /= w
    # Rows closer than w to their ticker's start: the window is cut at the ticker's first row.
    # Kept (partial windows, min_periods < w) ones are recomputed from their own rows only.
    keep = pos + 1 >= m
    part, plen = head[keep], pos[keep] + 1
    vol[part] = (prefix[part + 1] - prefix[part + 1 - plen]) / plen
    med[part] = _reduce_windows(a, part, plen, plen, _median_sorted)
    vol[head[~keep]] = np.nan
    med[head[~keep]] = np.nan
    return vol, med


def _features_sorted(starts, volume, adj_close, dates, spec: WindowSpec):
    """Both features for sorted columns (``starts``: first row of each ticker; ``dates``: (ticks,
    unit) for offset windows)."""
    if spec.rows is not None:
        return _row_window_features(starts, volume, adj_close, spec.rows, spec.min_periods)
    lo = _offset_window_starts(dates[0], starts, spec.span_ticks(dates[1]))
    return _window_mean(volume, lo, spec.min_periods), _offset_median(adj_close, lo, spec.min_periods)


# Set in the parent just before forking helpers, read by them (copy-on-write, no pickling).
_FORK_JOB: dict = {}
