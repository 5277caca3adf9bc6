"""The pure core: every feature column of a frame, per ticker, from the current and earlier rows.

``compute_sorted`` works on sorted columns (each ticker's rows together, in date order) and is what the
stage runs on each partition; ``add_features`` (a DataFrame or Arrow Table in any row order) and
``feature_arrays`` (the two task columns only) sort, call it, and put the rows back in the caller's order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .. import config
from ..config import ADJ_CLOSE, CLOSE, DATE, HIGH, LOW, SYMBOL, VOLUME
from ..errors import UserError
from .columns import _DAY_NS, _arrow, _date_ticks, _numeric, sort_order
from .inputs import NEEDS_HLC, check_names, forecast_inputs
from .rolling import _features_sorted
from .window import WindowSpec, parse_window

NEEDED_COLUMNS = (SYMBOL, DATE, VOLUME, ADJ_CLOSE)
RANGE_COLUMNS = (HIGH, LOW, CLOSE)  # only for the range_hl input


def day_numbers(ticks: tuple[np.ndarray, int]) -> np.ndarray:
    """Whole days since 1970-01-01 from ``(ticks, nanoseconds per tick)``."""
    values, unit_ns = ticks
    return values if unit_ns == _DAY_NS else np.floor_divide(values * unit_ns, _DAY_NS)


def compute_sorted(
    starts: np.ndarray,
    ticks: tuple[np.ndarray, int],
    volume: np.ndarray,
    adj_close: np.ndarray,
    spec: WindowSpec,
    inputs=config.FORECAST_INPUTS,
    high=None,
    low=None,
    close=None,
) -> dict:
    """Every feature column (float64) of sorted columns: the two task columns, then ``inputs``.

    ``starts``: first row of each ticker; ``ticks``: the dates as from ``columns._date_ticks``.
    """
    vol, med = _features_sorted(starts, volume, adj_close, ticks if spec.is_offset else None, spec)
    out = {config.VOL_FEATURE: vol, config.PRICE_FEATURE: med}
    if inputs:
        out.update(forecast_inputs(starts, day_numbers(ticks), volume, adj_close, high, low, close, inputs, med))
    return out


def _symbol_key(symbols) -> pa.Array:
    """Symbols as an array that compares as the strings do: dictionaries become dense ranks (no string
    per row is made), anything else stays as it is."""
    sym = _arrow(symbols)
    if isinstance(sym, pa.ChunkedArray):
        sym = sym.combine_chunks() if pa.types.is_dictionary(sym.type) else sym
    if not pa.types.is_dictionary(sym.type):
        return sym if isinstance(sym, pa.Array) else sym.combine_chunks()
    ranks = pc.rank(sym.dictionary, sort_keys="ascending", tiebreaker="dense").to_numpy()
    indices = sym.indices
    mask = indices.is_null().to_numpy(zero_copy_only=False) if indices.null_count else None
    return pa.array(ranks[indices.fill_null(0).to_numpy()], mask=mask)


def _columns(frame, names) -> list:
    return [frame[name] for name in names]


def _check(df, inputs) -> tuple:
    if isinstance(df, pa.RecordBatch):
        df = pa.Table.from_batches([df])
    if not isinstance(df, (pa.Table, pd.DataFrame)):
        raise UserError(f"add_features takes a pandas DataFrame or an Arrow Table, not {type(df).__name__}")
    have = df.column_names if isinstance(df, pa.Table) else list(df.columns)
    needed = NEEDED_COLUMNS + (RANGE_COLUMNS if any(name in NEEDS_HLC for name in inputs) else ())
    missing = [c for c in needed if c not in have]
    if missing:
        raise UserError(f"add_features needs columns {', '.join(needed)}; missing {', '.join(missing)}")
    return df, needed


def compute(df, spec: WindowSpec, inputs) -> tuple[dict, np.ndarray | None]:
    """All feature columns of ``df`` (any row order) in SORTED row order, and the order used (None = the
    rows were sorted already)."""
    df, needed = _check(df, inputs)
    sym, day = _symbol_key(df[SYMBOL]), _arrow(df[DATE])
    if isinstance(day, pa.ChunkedArray):
        day = day.combine_chunks()
    order = sort_order(sym, day)
    numbers = [_numeric(col, name) for col, name in zip(_columns(df, needed[2:]), needed[2:])]
    ticks = _date_ticks(day)
    if order.order is not None:
        numbers = [x[order.order] for x in numbers]
        ticks = (ticks[0][order.order], ticks[1])
    volume, adj_close, *hlc = numbers + [None] * (5 - len(numbers))
    cols = compute_sorted(order.starts, ticks, volume, adj_close, spec, inputs, *hlc)
    return cols, order.order


def add_features(df, window=config.DEFAULT_WINDOW, min_periods=0, *, inputs=config.FORECAST_INPUTS):
    """Return ``df`` with ``vol_moving_avg``, ``adj_close_rolling_med`` and the forecasting ``inputs`` added.

    ``df``: a pandas DataFrame or an Arrow Table with at least ``Symbol``, ``Date`` (YYYY-MM-DD
    strings, dates or timestamps), ``Volume`` and ``Adj Close`` (and High, Low, Close for ``range_hl``);
    rows in any order. The result has the same rows in the same order (and index) plus the float64
    columns; an Arrow Table in gives an Arrow Table out. Per Symbol, ordered by Date:

    - ``window`` (int): the current row and the ``window - 1`` rows before it of the same Symbol;
      ``min_periods=0`` means ``window`` (NaN until the window is full).
    - ``window`` (offset string like ``"30D"``): the rows of the same Symbol dated in
      ``(Date - 30 days, Date]``; ``min_periods=0`` then means 1, pandas' default for offsets.
    - ``inputs``: names from ``volcast.features.inputs`` (default ``config.FORECAST_INPUTS``; ``()`` for the
      two task columns only). They do not depend on ``window``.
    """
    spec = parse_window(window, min_periods)
    inputs = check_names(inputs)
    df, _ = _check(df, inputs)
    cols, order = compute(df, spec, inputs)
    if order is not None:  # back to the caller's row order
        for name, values in cols.items():
            back = np.empty_like(values)
            back[order] = values
            cols[name] = back
    if isinstance(df, pa.Table):
        for name, values in cols.items():
            column = pa.array(values, type=pa.float64())
            if name in df.column_names:
                df = df.set_column(df.column_names.index(name), name, column)
            else:
                df = df.append_column(name, column)
        return df
    return df.assign(**cols)


def feature_arrays(symbols, dates, volume, adj_close, window=config.DEFAULT_WINDOW, min_periods=0):
    """``(vol_moving_avg, adj_close_rolling_med)`` as float64 arrays aligned with the input rows.

    Inputs are columns (pandas Series, numpy or Arrow arrays) of equal length, in any row order.
    """
    n = len(symbols)
    if not (n == len(dates) == len(volume) == len(adj_close)):
        raise UserError("Symbol, Date, Volume and Adj Close must have the same number of rows")
    frame = pa.table(
        {SYMBOL: _arrow(symbols), DATE: _arrow(dates), VOLUME: _arrow(volume), ADJ_CLOSE: _arrow(adj_close)}
    )
    out = add_features(frame, window, min_periods, inputs=())
    return (out[config.VOL_FEATURE].to_numpy(), out[config.PRICE_FEATURE].to_numpy())
