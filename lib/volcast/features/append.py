"""Features of appended rows only (issue 16): the feature columns of a ticker's new rows, computed from its
last ``lookback_rows`` stored rows instead of its whole history.

Every feature reads a bounded number of earlier rows of the same ticker: the task window (``window`` rows,
or an offset of D days, which holds at most D rows since a ticker has one row per date), the forecasting
inputs' windows and lags (``vol_lr_K``, ``vol_meanK_lr``, ``vol_stdK``, the 30-row base) and the 52-week
inputs (``dist_52w_high``, ``days_since_zero_volume``: ``inputs.YEAR_ROWS`` rows). A new row's features
computed on the stored rows' tail therefore equal those of a full recompute (tests/test_daily_features.py).

The stage does not use this yet: appending rows to the features dataset without rewriting its partition
files needs delta files, which the "sorted by Symbol then Date" reading contract rules out (README, Daily
updates). This is the computing half, ready for that layout.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import config
from ..config import ADJ_CLOSE, CLOSE, DATE, HIGH, LOW, SYMBOL, VOLUME
from .core import add_features
from .inputs import _PATTERNS, BASE_WINDOW, YEAR_ROWS, check_names
from .window import parse_window

_DAY_NS = 86_400_000_000_000
_COLUMNS = (SYMBOL, DATE, VOLUME, ADJ_CLOSE, HIGH, LOW, CLOSE)


def lookback_rows(window=config.DEFAULT_WINDOW, min_periods=0, inputs=config.FORECAST_INPUTS) -> int:
    """How many stored rows before a ticker's first new row its new rows' features can read (at most)."""
    spec = parse_window(window, min_periods)
    task = spec.rows if spec.rows is not None else -(-spec.span_ns // _DAY_NS)
    ks = [int(m.group(1)) for name in check_names(inputs) for p in _PATTERNS.values() if (m := p.match(name))]
    return max([YEAR_ROWS, BASE_WINDOW, task, *ks])


def _plain(table: pa.Table) -> pa.Table:
    """The columns the features read, as the raw schema types (dictionaries decoded)."""
    present = [c for c in _COLUMNS if c in table.column_names]
    return table.select(present).cast(pa.schema([config.RAW_SCHEMA.field(c) for c in present]))


def features_of_new_rows(
    previous: pa.Table, new: pa.Table, window=config.DEFAULT_WINDOW, min_periods=0, inputs=config.FORECAST_INPUTS
) -> pa.Table:
    """The feature columns (float64) of ``new``'s rows, in ``new``'s row order.

    ``previous``: the stored rows (at least Symbol, Date, Volume, Adj Close; High, Low, Close for
    ``range_hl``), sorted by Symbol then Date; only each ticker's last ``lookback_rows`` are used.
    ``new``: the rows appended, each dated after its ticker's stored rows (a ticker may be new).
    """
    inputs = check_names(inputs)
    back = lookback_rows(window, min_periods, inputs)
    previous, new = _plain(previous), _plain(new)
    if previous.num_rows:
        symbols = previous[SYMBOL].combine_chunks()
        n = len(symbols)
        change = np.ones(n, bool)
        change[1:] = pc.not_equal(symbols.slice(1), symbols.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        run = np.cumsum(change) - 1
        ends = np.append(np.flatnonzero(change)[1:], n)  # one past each run's last row
        from_end = ends[run] - np.arange(n)  # 1 = a ticker's last stored row
        wanted = pc.is_in(symbols, value_set=pc.unique(new[SYMBOL].combine_chunks())).to_numpy(zero_copy_only=False)
        tail = previous.filter(pa.array(wanted & (from_end <= back)))
    else:
        tail = previous
    both = pa.concat_tables([tail, new.select(tail.column_names)]) if tail.num_rows else new
    names = [config.VOL_FEATURE, config.PRICE_FEATURE, *inputs]
    out = add_features(both, window, min_periods, inputs=inputs)  # rows stay in the order given
    return out.select(names).slice(tail.num_rows)
