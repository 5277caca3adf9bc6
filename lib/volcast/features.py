"""Feature stage: per-ticker rolling Volume mean and Adj Close median (DESIGN.md, Problem 2).

``add_features`` is the pure core that training, the dashboard and prediction reuse; ``run`` is the
stage: ``DIR/data/raw`` -> ``DIR/data/features`` (+ ``DIR/reports/features.json``), one partition file
at a time, in parallel, recomputing only the partitions whose raw file changed.

Semantics (the same as pandas ``groupby("Symbol").rolling(...)`` on rows ordered by Date):

- ``vol_moving_avg``: mean of ``Volume`` over the window; ``adj_close_rolling_med``: median of
  ``Adj Close`` (not Close) over the same window; both float64.
- ``window=30``: the current row and the 29 rows before it of the SAME Symbol. ``min_periods=0``
  means "= window": NaN until 30 rows exist. ``min_periods`` < window gives partial windows that
  still never reach into the previous ticker.
- ``window="30D"`` (any fixed pandas offset): the rows of the same Symbol whose Date lies in
  ``(t - 30 days, t]``. ``min_periods=0`` then means 1, as in pandas for offset windows.
- Missing values (NaN/null) are skipped and ``min_periods`` counts the non-missing ones, as in pandas.

How it stays exact and fast: rows are sorted once (only if they are not already sorted by Symbol,
Date), then whole-column kernels run over all tickers at once and each row's window start is clipped
at its ticker's first row. The mean is a difference of int64 prefix sums (Volume is an integer), so it
is exact with no floating drift however long the column; the median is bottleneck's exact
``move_median`` over the whole column, and the few rows whose 30-row window would reach into the
previous ticker (only possible when ``min_periods`` < window) are recomputed from their own rows.
Offset windows use the same prefix sums for the mean and an exact chunked median of each row's
(at most a few dozen) rows.
"""
from __future__ import annotations

import mmap
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import bottleneck as bn
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.lib.stride_tricks import sliding_window_view

from . import config, storage
from .errors import UserError

STAGE = "features"
# Lives inside the published features dataset, so it is swapped in atomically with the data it
# describes; the leading underscore makes pyarrow/pandas readers of the directory skip it.
STATE_FILE = "_features_state.json"
SYMBOL, DATE, VOLUME, ADJ_CLOSE = "Symbol", "Date", "Volume", "Adj Close"
NEEDED_COLUMNS = (SYMBOL, DATE, VOLUME, ADJ_CLOSE)

_DAY_NS = 86_400 * 10**9
_RAGGED_BUDGET = 1 << 22  # cells (32 MiB of float64) per block of the ragged-window median
_PARALLEL_MIN_ROWS = 1_000_000  # below this a forked helper costs more than it saves


# ---------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class WindowSpec:
    """A parsed ``window``/``min_periods`` pair: exactly one of ``rows`` and ``span_ns`` is set."""

    label: int | str  # as the user wrote it (30 or "30D"), for reports
    rows: int | None
    span_ns: int | None
    min_periods: int  # effective: never 0

    @property
    def is_offset(self) -> bool:
        return self.span_ns is not None

    def span_ticks(self, unit_ns: int) -> int:
        """The span in whole date ticks: ``t_j > t - span`` holds for integer ticks iff it holds for
        ``t_j > t - ceil(span / unit)``."""
        return -(-self.span_ns // unit_ns)

    def state(self) -> dict:
        return {"rows": self.rows, "span_ns": self.span_ns, "min_periods": self.min_periods}


def parse_window(window=config.DEFAULT_WINDOW, min_periods=0) -> WindowSpec:
    """Check ``window`` (rows, or a fixed offset such as ``"30D"``) and ``min_periods``.

    ``min_periods=0`` means the whole window for a row count, and 1 for an offset (pandas' defaults).
    """
    if isinstance(window, WindowSpec):
        return window
    hint = "window must be a positive number of rows (e.g. 30) or a fixed calendar offset (e.g. '30D')"
    if isinstance(window, str) and window.strip().isdigit():
        window = int(window.strip())
    if isinstance(window, (bool, np.bool_)) or window is None:
        raise UserError(f"{hint}; got {window!r}")
    if isinstance(window, (float, np.floating)) and float(window).is_integer():
        window = int(window)
    rows = span_ns = None
    if isinstance(window, (int, np.integer)):
        if window < 1:
            raise UserError(f"{hint}; got {window!r}")
        rows = label = int(window)
    elif isinstance(window, str) or isinstance(window, (pd.Timedelta, np.timedelta64)) or hasattr(window, "total_seconds"):
        label = window.strip() if isinstance(window, str) else str(pd.Timedelta(window))
        try:
            offset = pd.tseries.frequencies.to_offset(window.strip() if isinstance(window, str) else pd.Timedelta(window))
            span_ns = int(pd.Timedelta(offset).value)  # only fixed offsets (D, h, min...) convert
        except (ValueError, TypeError):
            raise UserError(f"{hint}; {window!r} is not a fixed offset (months and years vary in length)") from None
        if span_ns <= 0:
            raise UserError(f"{hint}; got {window!r}")
    else:
        raise UserError(f"{hint}; got {window!r}")

    if isinstance(min_periods, str) and min_periods.strip().isdigit():
        min_periods = int(min_periods.strip())
    if min_periods is None:
        min_periods = 0
    if isinstance(min_periods, (bool, np.bool_)) or not isinstance(min_periods, (int, np.integer)) or min_periods < 0:
        raise UserError(f"min_periods must be a whole number >= 0 (0 = the window's default); got {min_periods!r}")
    min_periods = int(min_periods)
    if rows is not None:
        if min_periods > rows:
            raise UserError(f"min_periods ({min_periods}) cannot exceed window ({rows}); lower it or use 0 (= window)")
        min_periods = min_periods or rows
    else:
        min_periods = min_periods or 1
    return WindowSpec(label, rows, span_ns, min_periods)


# ---------------------------------------------------------------------------------------------
# Input columns


def _arrow(column) -> pa.Array | pa.ChunkedArray:
    """An Arrow (possibly chunked: not combined, no copy) array from a pandas Series, numpy or Arrow."""
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return column
    return pa.array(column)  # zero-copy for pandas' Arrow-backed strings


def _numeric_source(column, name: str):
    """Volume/Adj Close ready to slice: Arrow columns stay Arrow (converted per slice, in parallel
    helpers when there are some), anything else becomes numpy now."""
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise UserError(f"column {name!r} must be numeric, not {column.type}")
        return column
    return _numeric(column, name)


def _numeric_slice(source, start: int, stop: int, name: str) -> np.ndarray:
    if isinstance(source, np.ndarray):
        return source[start:stop]
    return _numeric(source.slice(start, stop - start), name)


def _numeric(column, name: str) -> np.ndarray:
    """int64 stays int64 (exact sums); anything else becomes float64 with NaN for missing."""
    if isinstance(column, pd.Series):
        if column.dtype.kind in "iu":
            return column.to_numpy(dtype=np.int64)
        try:
            return column.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            raise UserError(f"column {name!r} must be numeric") from None
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        arr = column
        if pa.types.is_integer(arr.type) and arr.null_count == 0:
            return arr.to_numpy().astype(np.int64, copy=False)
        if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
            raise UserError(f"column {name!r} must be numeric, not {arr.type}")
        return arr.cast(pa.float64()).to_numpy(zero_copy_only=False)
    arr = np.asarray(column)
    return arr.astype(np.int64, copy=False) if arr.dtype.kind in "iu" else arr.astype(np.float64, copy=False)


def _is_iso_day_strings(arr: pa.Array | pa.ChunkedArray) -> bool:
    """All values are 10-character 'YYYY-MM-DD' strings: then string order is date order."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)) or arr.null_count or not len(arr):
        return False
    if isinstance(arr, pa.ChunkedArray):
        return all(_is_iso_day_strings(chunk) for chunk in arr.chunks if len(chunk))
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if pa.types.is_large_string(arr.type) else np.int32)
    offsets = offsets[arr.offset: arr.offset + len(arr) + 1]
    if offsets[-1] - offsets[0] != 10 * len(arr):
        return False
    if len(arr) > 1 and not np.all(np.diff(offsets) == 10):
        return False
    chars = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]].reshape(-1, 10)
    return bool(np.all(chars[:, 4] == ord("-")) and np.all(chars[:, 7] == ord("-")))


def _date_ticks(arr: pa.Array) -> tuple[np.ndarray, int]:
    """Dates (ISO strings, dates, timestamps, tz-aware or not) as (int64 ticks, nanoseconds per tick).

    Days stay days and timestamps keep their unit, so no date is out of range.
    """
    if arr.null_count:
        raise UserError(f"column {DATE!r} has {arr.null_count} missing values; every row needs a date")
    typ = arr.type
    if pa.types.is_date32(typ):
        return arr.cast(pa.int32()).to_numpy().astype(np.int64), _DAY_NS
    if pa.types.is_date64(typ):
        return arr.cast(pa.int64()).to_numpy(), 10**6
    if pa.types.is_timestamp(typ):
        unit_ns = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[typ.unit]
        return arr.cast(pa.int64()).to_numpy(), unit_ns
    if _is_iso_day_strings(arr):
        try:
            return arr.cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64), _DAY_NS
        except pa.ArrowInvalid:
            pass  # e.g. '2020-13-45': let pandas say what is wrong below
    try:
        parsed = pd.to_datetime(pd.Series(arr.to_pandas()), format="mixed")
    except (ValueError, TypeError) as exc:
        raise UserError(f"column {DATE!r} has values that are not dates ({exc}); use YYYY-MM-DD") from None
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.to_numpy(dtype="datetime64[ns]").view(np.int64), 1


@dataclass
class _Layout:
    """Where each ticker's rows are once sorted: ``order`` (None = input already sorted), ``starts``."""

    order: np.ndarray | None
    starts: np.ndarray  # first row of each ticker, in sorted order
    symbols: pa.Array  # in sorted order


def _group_layout(symbols: pa.Array, dates: pa.Array) -> _Layout:
    """Sort only when needed: most inputs (the raw dataset) are already sorted by Symbol, Date."""
    n = len(symbols)
    if symbols.null_count:
        raise UserError(f"column {SYMBOL!r} has {symbols.null_count} missing values; every row needs a ticker")
    if n == 0:
        return _Layout(None, np.zeros(0, dtype=np.int64), symbols)
    # ISO day strings compare in date order as they are: no parsing needed just to check the order.
    date_key = dates if _is_iso_day_strings(dates) else pa.array(_date_ticks(dates)[0])
    new = np.ones(n, dtype=bool)
    order = None
    if n > 1:
        new[1:] = pc.not_equal(symbols.slice(1), symbols.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        # Each run's Symbol, in order: strictly ascending <=> each ticker is one run, runs in order.
        runs = symbols.filter(pa.array(new))
        down = pc.any(pc.less_equal(runs.slice(1), runs.slice(0, len(runs) - 1))).as_py()
        back = pc.less(date_key.slice(1), date_key.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        if down or np.any(back & ~new[1:]):
            # Arrow's sort is stable: rows with equal (Symbol, Date) keep their input order.
            order = pc.sort_indices(pa.table({"s": symbols, "d": date_key}),
                                    sort_keys=[("s", "ascending"), ("d", "ascending")]).to_numpy()
            symbols = symbols.take(pa.array(order))
            new[1:] = pc.not_equal(symbols.slice(1), symbols.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return _Layout(order, np.flatnonzero(new), symbols)


# ---------------------------------------------------------------------------------------------
# Kernels on sorted columns (rows of one ticker contiguous, ordered by date)


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
        r = rows[s:s + step] - (width - 1)
        outside = behind >= lengths[s:s + step, None]
        if r[-1] - r[0] == len(r) - 1:  # contiguous rows: one masked copy of a slice (fast)
            block = np.where(outside, np.nan, view[r[0]: r[-1] + 1])
        else:  # scattered rows (a few near ticker starts): gather, then mask
            block = view[r]
            block[outside] = np.nan
        out[s:s + step] = reduce(block, valid[s:s + step])
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
        np.subtract(prefix[w:], prefix[:-w], out=vol[w - 1:])
        vol[w - 1:] /= w
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


def _fork_part(k: int) -> None:
    """Compute part ``k`` (rows ``bounds[k]:bounds[k+1]``, whole tickers) into the shared outputs."""
    job = _FORK_JOB
    s, e = job["bounds"][k], job["bounds"][k + 1]
    spec = job["spec"]
    if job["starts"] is None:
        # Input believed sorted: each part checks its own rows and finds its own tickers, so this
        # work is split too. A part that finds disorder says so and the caller sorts globally.
        lay = _group_layout(job["sym"].slice(s, e - s), job["day"].slice(s, e - s))
        if lay.order is not None:
            job["unsorted"][k] = 1
            return
        starts = lay.starts
        t = _date_ticks(job["day"].slice(s, e - s)) if spec.is_offset else None
    else:
        starts = job["starts"][(job["starts"] >= s) & (job["starts"] < e)] - s
        t = (job["t"][0][s:e], job["t"][1]) if spec.is_offset else None
    v, a = _numeric_slice(job["v"], s, e, VOLUME), _numeric_slice(job["a"], s, e, ADJ_CLOSE)
    vol, med = _features_sorted(starts, v, a, t, spec)
    job["out_v"][s:e] = vol
    job["out_a"][s:e] = med


def _shared(n: int, dtype) -> np.ndarray:
    """An array in anonymous shared memory: forked helpers write into it, the parent reads it."""
    size = np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(size, n * size)), dtype=dtype)[:n]


def _forked(bounds: list[int], job: dict):
    """Run parts 1.. in forked helpers and part 0 here; None if a part found unsorted rows."""
    n = bounds[-1]
    _FORK_JOB.update(job, bounds=bounds, out_v=_shared(n, np.float64), out_a=_shared(n, np.float64),
                     unsorted=_shared(len(bounds), np.int8))
    try:
        ctx = multiprocessing.get_context("fork")
        helpers = [ctx.Process(target=_fork_part, args=(k,)) for k in range(1, len(bounds) - 1)]
        for proc in helpers:
            proc.start()
        _fork_part(0)
        for proc in helpers:
            proc.join()
        failed = [proc.exitcode for proc in helpers if proc.exitcode != 0]
        if failed:
            raise RuntimeError(f"feature helper process failed (exit codes {failed})")
        if _FORK_JOB["unsorted"].any():
            return None
        return _FORK_JOB["out_v"], _FORK_JOB["out_a"]
    finally:
        _FORK_JOB.clear()


def _next_ticker_start(symbols: pa.Array, row: int) -> int:
    """The first row at or after ``row`` whose Symbol differs from the row before it (or the end)."""
    n, step = len(symbols), 4096
    while row < n:
        end = min(n, row + step)
        change = pc.not_equal(symbols.slice(row, end - row), symbols.slice(row - 1, end - row))
        hits = np.flatnonzero(change.to_numpy(zero_copy_only=False))
        if len(hits):
            return row + int(hits[0])
        row, step = end, step * 2
    return n


def _can_fork(n: int, jobs: int) -> bool:
    return jobs > 1 and n >= _PARALLEL_MIN_ROWS and "fork" in multiprocessing.get_all_start_methods()


# ---------------------------------------------------------------------------------------------
# Public core


def feature_arrays(symbols, dates, volume, adj_close, window=config.DEFAULT_WINDOW, min_periods=0, *, jobs=1):
    """``(vol_moving_avg, adj_close_rolling_med)`` as float64 arrays aligned with the input rows.

    Inputs are columns (pandas Series, numpy or Arrow arrays) of equal length, in any row order.
    ``jobs`` > 1 splits inputs of >= 1 M rows over forked helper processes (where fork exists).
    """
    spec = parse_window(window, min_periods)
    sym, day = _arrow(symbols), _arrow(dates)
    v, a = _numeric_source(volume, VOLUME), _numeric_source(adj_close, ADJ_CLOSE)
    n, jobs = len(sym), int(jobs or 1)
    if not (n == len(day) == len(v) == len(a)):
        raise UserError("Symbol, Date, Volume and Adj Close must have the same number of rows")
    if _can_fork(n, jobs):
        # Fast path for sorted input: cut at ticker changes near n/jobs, n*2/jobs...; the parts are
        # in order if each is sorted inside and each cut goes up in Symbol.
        bounds = sorted({0, n, *(_next_ticker_start(sym, n * k // jobs) for k in range(1, jobs))})
        if all(sym[c - 1].as_py() < sym[c].as_py() for c in bounds[1:-1]):
            done = _forked(bounds, dict(starts=None, sym=sym, day=day, v=v, a=a, spec=spec))
            if done is not None:
                return done
    lay = _group_layout(sym, day)
    v, a = _numeric_slice(v, 0, n, VOLUME), _numeric_slice(a, 0, n, ADJ_CLOSE)
    t = _date_ticks(day) if spec.is_offset else None
    if lay.order is not None:
        v, a = v[lay.order], a[lay.order]
        t = (t[0][lay.order], t[1]) if t is not None else None
    if _can_fork(n, jobs) and len(lay.starts) > 1:
        at = np.searchsorted(lay.starts, [n * k // jobs for k in range(1, jobs)])
        cuts = lay.starts[np.minimum(at, len(lay.starts) - 1)]
        bounds = sorted({0, n, *cuts.tolist()})
        vol, med = _forked(bounds, dict(starts=lay.starts, v=v, a=a, t=t, spec=spec))
    else:
        vol, med = _features_sorted(lay.starts, v, a, t, spec)
    if lay.order is not None:
        # Back to the caller's row order.
        vol_out, med_out = np.empty_like(vol), np.empty_like(med)
        vol_out[lay.order], med_out[lay.order] = vol, med
        vol, med = vol_out, med_out
    return vol, med


def add_features(df, window=config.DEFAULT_WINDOW, min_periods=0, *, jobs=1):
    """Return ``df`` with ``vol_moving_avg`` and ``adj_close_rolling_med`` added (float64).

    ``df``: a pandas DataFrame or an Arrow Table with at least ``Symbol``, ``Date`` (YYYY-MM-DD
    strings, dates or timestamps), ``Volume`` and ``Adj Close``; rows in any order. The result has
    the same rows in the same order (and index) plus the two columns; an Arrow Table in gives an
    Arrow Table out. Per Symbol, ordered by Date:

    - ``window`` (int): the current row and the ``window - 1`` rows before it of the same Symbol;
      ``min_periods=0`` means ``window`` (NaN until the window is full).
    - ``window`` (offset string like ``"30D"``): the rows of the same Symbol dated in
      ``(Date - 30 days, Date]``; ``min_periods=0`` then means 1, pandas' default for offsets.

    ``jobs`` > 1 splits inputs of >= 1 M rows over forked helper processes (where fork exists).
    """
    if isinstance(df, pa.RecordBatch):
        df = pa.Table.from_batches([df])
    if isinstance(df, pa.Table):
        missing = [c for c in NEEDED_COLUMNS if c not in df.column_names]
    elif isinstance(df, pd.DataFrame):
        missing = [c for c in NEEDED_COLUMNS if c not in df.columns]
    else:
        raise UserError(f"add_features takes a pandas DataFrame or an Arrow Table, not {type(df).__name__}")
    if missing:
        raise UserError(f"add_features needs columns {', '.join(NEEDED_COLUMNS)}; missing {', '.join(missing)}")
    vol, med = feature_arrays(df[SYMBOL], df[DATE], df[VOLUME], df[ADJ_CLOSE], window, min_periods, jobs=jobs)
    if isinstance(df, pa.Table):
        for name, values in ((config.VOL_FEATURE, vol), (config.PRICE_FEATURE, med)):
            column = pa.array(values, type=pa.float64())
            if name in df.column_names:
                df = df.set_column(df.column_names.index(name), name, column)
            else:
                df = df.append_column(name, column)
        return df
    return df.assign(**{config.VOL_FEATURE: vol, config.PRICE_FEATURE: med})


# ---------------------------------------------------------------------------------------------
# Reading the published dataset (notebook, dashboard)


def _features_path(output_dir) -> Path:
    layout = config.Layout.at(output_dir)
    path = storage.current_version(layout.features_dir)
    if path is None:
        raise UserError(f"no features dataset at {layout.features_dir}; run the features stage first "
                        "(python run_pipeline.py --stages features)")
    return path


def load_features(output_dir, symbol: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """The features dataset as a DataFrame, or one ticker's rows (only its partition file is read)."""
    path = _features_path(output_dir)
    if symbol is None:
        return pd.read_parquet(path, columns=columns)
    part = path / storage.partition_file(storage.partition_key(symbol))
    # Its partition file when the dataset uses the current partitioning; otherwise (a dataset
    # written before a change of scheme) the whole directory, pruned by row-group statistics.
    source = part if part.exists() else path
    return pq.read_table(source, columns=columns, filters=[(SYMBOL, "==", symbol)],
                         schema=config.FEATURES_SCHEMA).to_pandas()


def most_rows_symbol(output_dir) -> str:
    """The ticker with the most rows (the alphabetically first on a tie): a good one to chart."""
    # Symbol read as dictionary indices and counted: no string per row (x3: 0.45 s -> 0.2 s).
    rows = storage.dictionary_value_counts(
        pq.read_table(_features_path(output_dir), columns=[SYMBOL], read_dictionary=[SYMBOL])[SYMBOL])
    if not rows:
        raise UserError("the features dataset is empty; ingest a source with data first")
    return min(rows, key=lambda name: (-rows[name], name))


# ---------------------------------------------------------------------------------------------
# The stage


def _code_version() -> str:
    """This module's source: a partition computed by other code is never reused."""
    # storage.py holds the partitioning scheme.
    return storage.code_digest(__file__, storage.__file__, extra=(config.FEATURES_SCHEMA,))


def _fingerprint(path: Path) -> str:
    # Ingest hard-links unchanged partitions into each new raw version and replaces changed ones, so
    # (size, mtime, inode) changes exactly when a partition's content may have changed.
    st = path.stat()
    return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}"


def _partition_stats(starts: np.ndarray, n: int, names: list[str], dates: tuple[np.ndarray, int] | None,
                     spec: WindowSpec, vol: np.ndarray, med: np.ndarray) -> dict:
    """Counts for the report; ``names`` are the tickers in ``starts`` order."""
    ends = np.append(starts[1:], n)
    if spec.rows is not None:
        full = np.maximum(ends - starts - (spec.rows - 1), 0)  # per ticker: rows from the window-th on
        short = (ends - starts) < spec.rows
    else:
        # An offset window is "full" when the ticker already traded at the window's far end.
        ticks, span = dates[0], spec.span_ticks(dates[1])
        full = ticks - np.repeat(ticks[starts], ends - starts) >= span
        short = (ticks[ends - 1] - ticks[starts]) < span if n else np.zeros(0, bool)
    return {
        "rows": int(n),
        "tickers": int(len(starts)),
        "rows_with_full_window": int(full.sum()),
        "rows_with_features": int((~np.isnan(vol) & ~np.isnan(med)).sum()),
        "short_tickers": [name for name, is_short in zip(names, short.tolist()) if is_short],
    }


# Symbol and Security Name are read as Arrow dictionaries and written back as they are: no string is
# materialised or hashed per row (read 3.0 s -> 1.9 s and about 0.8 s less write over the x3 benchmark's
# 23.6 M rows).
_FEATURES_WRITE_SCHEMA = pa.schema([*config.RAW_DICTIONARY_SCHEMA,
                                    *[config.FEATURES_SCHEMA.field(c) for c in config.FEATURE_COLUMNS]])


def _read_raw_partition(src) -> pa.Table:
    """One raw partition with the ticker columns as (unified) dictionaries; a clear error if it is not one."""
    table = pq.read_table(src, read_dictionary=list(config.TICKER_COLUMNS))
    missing = [c for c in config.RAW_COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"{src}: not a raw volcast partition (missing {', '.join(missing)}); re-run ingest")
    try:
        table = table.select(list(config.RAW_COLUMNS)).cast(config.RAW_DICTIONARY_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise UserError(f"{src}: columns do not match the raw schema ({exc}); re-run ingest") from None
    # Each row group brings its own dictionary: one shared dictionary per column, so rows compare by
    # index and the writer takes the column as it is (no copy of the row groups into one chunk).
    return table.unify_dictionaries()


def _symbol_ranks(symbols: pa.DictionaryArray) -> pa.Array:
    """Per row, the dense rank of its Symbol among the dictionary's values: ints that compare as the
    strings do, so checking and sorting the order needs no string per row. Nulls stay null."""
    ranks = pc.rank(symbols.dictionary, sort_keys="ascending", tiebreaker="dense").to_numpy()
    indices = symbols.indices
    mask = indices.is_null().to_numpy(zero_copy_only=False) if indices.null_count else None
    return pa.array(ranks[indices.fill_null(0).to_numpy()], mask=mask)


def process_partition(src: str | os.PathLike, dst: str | os.PathLike, window=config.DEFAULT_WINDOW,
                      min_periods=0) -> dict:
    """Read one raw partition file, add the features, write it to ``dst``; return its stats."""
    spec = parse_window(window, min_periods)
    table = _read_raw_partition(src)
    lay = _group_layout(_symbol_ranks(table[SYMBOL].combine_chunks()), table[DATE])
    if lay.order is not None:  # the raw contract says sorted; keep the output sorted regardless
        table = table.take(pa.array(lay.order))
    symbols = table[SYMBOL]
    day = table[DATE]
    t = _date_ticks(day) if spec.is_offset else None
    vol, med = _features_sorted(lay.starts, _numeric(table[VOLUME], VOLUME), _numeric(table[ADJ_CLOSE], ADJ_CLOSE),
                                t, spec)
    out = table.append_column(config.VOL_FEATURE, pa.array(vol)).append_column(config.PRICE_FEATURE, pa.array(med))
    storage.write_parquet(out.cast(_FEATURES_WRITE_SCHEMA), dst, arrow_schema=False)
    names = symbols.take(pa.array(lay.starts)).cast(pa.string()).to_pylist() if len(lay.starts) else []
    return _partition_stats(lay.starts, table.num_rows, names, t, spec, vol, med)


def _compute(todo: list[tuple[Path, Path]], spec: WindowSpec, jobs: int) -> dict[str, dict]:
    from tqdm import tqdm  # a text bar: an executed notebook keeps a line, not a widget

    stats: dict[str, dict] = {}
    bar = tqdm(total=len(todo), desc="features", unit="partition", disable=not todo, mininterval=0.5)
    args = (spec, spec.min_periods)
    if jobs <= 1 or len(todo) <= 1:
        for src, dst in todo:
            stats[src.name] = process_partition(src, dst, *args)
            bar.update()
    else:
        # Threads, not processes: Parquet reads and writes and Arrow compute, most of the time, release
        # the GIL, and a thread starts at once where a fresh worker process took 1.2 s
        # (forkserver + imports) in every pipeline kernel. Measured at x3 (113 partitions, 2 cores):
        # 4.8 s with threads, 4.8 s with warm worker processes, 6.1 s with the cold ones the stage had.
        # Largest partitions first so the workers finish together.
        todo = sorted(todo, key=lambda item: -item[0].stat().st_size)
        with ThreadPoolExecutor(max_workers=min(jobs, len(todo)), thread_name_prefix="features") as pool:
            futures = {pool.submit(process_partition, src, dst, *args): src.name for src, dst in todo}
            for future in as_completed(futures):
                stats[futures[future]] = future.result()
                bar.update()
    bar.close()
    return stats


def run(output_dir, window=config.DEFAULT_WINDOW, min_periods=0, jobs=0, incremental=True) -> dict:
    """The features stage: ``DIR/data/raw`` -> ``DIR/data/features`` + ``DIR/reports/features.json``.

    Incremental: a partition whose raw file, parameters and this code are unchanged since the last
    run is carried over (hard link) instead of recomputed; the result equals a full run.
    """
    t0 = time.perf_counter()
    spec = parse_window(window, min_periods)
    jobs = config.resolve_jobs(jobs)
    layout = config.Layout.at(output_dir)
    raw = storage.current_version(layout.raw_dir)
    if raw is None:
        raise UserError(f"no raw dataset at {layout.raw_dir}; run the ingest stage first "
                        "(python run_pipeline.py --stages ingest)")
    sources = {p.name: p for p in sorted(raw.glob(f"{storage.PARTITION_PREFIX}*.parquet"))}
    fingerprints = {name: _fingerprint(path) for name, path in sources.items()}
    params = {**spec.state(), "code": _code_version()}

    current = storage.current_version(layout.features_dir)
    # incremental=False (the pipeline's --force): recompute every partition.
    previous = storage.read_json(current / STATE_FILE, default=None) if current and incremental else None
    reusable: dict[str, dict] = {}
    if isinstance(previous, dict) and previous.get("params") == params:
        for name, entry in previous.get("partitions", {}).items():
            if fingerprints.get(name) == entry.get("fingerprint") and (current / name).is_file():
                reusable[name] = entry["stats"]
    todo_names = [name for name in sources if name not in reusable]
    stale = bool(current) and any(
        p.name not in sources for p in current.glob(f"{storage.PARTITION_PREFIX}*.parquet"))

    computed: dict[str, dict] = {}
    if todo_names or stale or current is None:
        with storage.publish_dir(layout.features_dir, seed_from_current=bool(reusable)) as staging:
            for item in staging.iterdir():  # seeded: drop what is not carried over
                if item.name not in reusable:
                    item.unlink()
            computed = _compute([(sources[name], staging / name) for name in todo_names], spec, jobs)
            state = {"params": params, "partitions": {
                name: {"fingerprint": fingerprints[name], "stats": reusable.get(name) or computed[name]}
                for name in sources}}
            storage.atomic_write_json(staging / STATE_FILE, state)
    all_stats = [reusable.get(name) or computed[name] for name in sources]

    short = sorted(t for s in all_stats for t in s["short_tickers"])
    report = {
        "stage": STAGE,
        "rows": sum(s["rows"] for s in all_stats),
        "tickers": sum(s["tickers"] for s in all_stats),
        "window": spec.label,
        "min_periods": spec.min_periods,
        "rows_with_full_window": sum(s["rows_with_full_window"] for s in all_stats),
        "rows_with_features": sum(s["rows_with_features"] for s in all_stats),
        "tickers_shorter_than_window": len(short),
        "tickers_shorter_than_window_list": short,
        "partitions": len(sources),
        "partitions_recomputed": len(todo_names),
        "partitions_reused": len(sources) - len(todo_names),
        "jobs": jobs,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    storage.atomic_write_json(layout.report(STAGE), report)
    return report
