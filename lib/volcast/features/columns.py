"""Input columns as the kernels want them: numbers as numpy, dates as integer ticks, and the sort
order (``SortOrder``) that puts each ticker's rows together in date order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..config import DATE, SYMBOL
from ..errors import UserError

_DAY_NS = 86_400 * 10**9


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
    offsets = offsets[arr.offset : arr.offset + len(arr) + 1]
    if offsets[-1] - offsets[0] != 10 * len(arr):
        return False
    if len(arr) > 1 and not np.all(np.diff(offsets) == 10):
        return False
    chars = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(-1, 10)
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
class SortOrder:
    """Where each ticker's rows are once sorted: ``order`` (None = input already sorted), ``starts``."""

    order: np.ndarray | None
    starts: np.ndarray  # first row of each ticker, in sorted order
    symbols: pa.Array  # in sorted order


def sort_order(symbols: pa.Array, dates: pa.Array) -> SortOrder:
    """Sort only when needed: most inputs (the raw dataset) are already sorted by Symbol, Date."""
    n = len(symbols)
    if symbols.null_count:
        raise UserError(f"column {SYMBOL!r} has {symbols.null_count} missing values; every row needs a ticker")
    if n == 0:
        return SortOrder(None, np.zeros(0, dtype=np.int64), symbols)
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
            order = pc.sort_indices(
                pa.table({"s": symbols, "d": date_key}), sort_keys=[("s", "ascending"), ("d", "ascending")]
            ).to_numpy()
            symbols = symbols.take(pa.array(order))
            new[1:] = pc.not_equal(symbols.slice(1), symbols.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    return SortOrder(order, np.flatnonzero(new), symbols)
