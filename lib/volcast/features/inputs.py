"""The forecasting inputs (``config.FORECAST_INPUTS``): per ticker, from the current and earlier rows only.

Kernels on sorted columns (each ticker's rows contiguous, in date order; ``starts`` = first row of each
ticker), vectorized over all tickers at once with each ticker's first rows masked, so no value ever
reads a row of another ticker or a later row. Names:

- ``log_vol_mean30``: log1p of the mean Volume of the last 30 rows (NaN until 30 rows exist). Every
  volume input below is a log ratio to it, ``log1p(x) - log_vol_mean30``, so one tree split means
  the same for a large and a small ticker; the forecast model's target is one too.
- ``vol_lr_K``: Volume K rows back (``vol_lr_0`` = today's).
- ``vol_meanK_lr``: mean Volume of the last K rows (exact: integer prefix sums).
- ``vol_medK_lr``: median of log1p(Volume) over the last K rows (an even K averages the middle two), minus
  ``log_vol_mean30``: the ticker's typical day, which spikes do not move (NaN until K rows exist). The
  forecast model's target is measured from ``vol_med30_lr`` (``volcast.train.forecast_model``).
- ``vol_stdK``: standard deviation (ddof 0) of log1p(Volume) over the last K rows, each window
  computed on its own (no running sums, no drift).
- ``return_1d``: log(Adj Close / previous row's Adj Close); NaN unless both are positive.
- ``range_hl``: (High - Low) / Close; NaN unless Close is positive.
- ``weekday``: 0 = Monday .. 6 = Sunday.
- ``dist_52w_high``: log(Adj Close / the highest Adj Close of the last 252 rows), from the ticker's first
  row on (a shorter history is its own "year"); NaN unless the prices are positive.
- ``days_since_zero_volume``: rows since the last row with Volume 0 (0 = today), 252 when none of the
  last 252 rows had one.
- ``log_price_med``: log of ``adj_close_rolling_med`` (the task column, so its window), clipped at 1e-4: the
  ticker's price level (low-priced shares trade more shares).
- The target-day calendar (``calendar.CALENDAR_INPUTS``: weekday, gap in days, options expiration, month
  or quarter end, day before a holiday of the NEXT trading day): known in advance, from the row's date only.

``market_vol_lr`` (the market's total Volume that day as a log ratio to its 30-date mean) is cross-ticker:
a partition cannot compute it, so the train stage does, from every row's Volume (``volcast.train.rows``);
``market_volume_ratio`` here is the same rule on one frame.
"""

from __future__ import annotations

import re

import bottleneck as bn
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..config import LOG_VOL_MEAN30
from ..errors import UserError
from .calendar import CALENDAR_INPUTS, calendar_inputs
from .rolling import _lengths, _positions, _window_mean

BASE_WINDOW = 30
YEAR_ROWS = 252
_STD_BLOCK = 1 << 20  # rows per block of the windowed standard deviation

_PATTERNS = {
    "lag": re.compile(r"vol_lr_(\d+)$"),
    "mean": re.compile(r"vol_mean(\d+)_lr$"),
    "median": re.compile(r"vol_med(\d+)_lr$"),
    "std": re.compile(r"vol_std(\d+)$"),
}
PRICE_LEVEL = "log_price_med"
FIXED = (
    LOG_VOL_MEAN30,
    "return_1d",
    "range_hl",
    "weekday",
    "dist_52w_high",
    "days_since_zero_volume",
    PRICE_LEVEL,
    *CALENDAR_INPUTS,
)
NEEDS_HLC = ("range_hl",)


def check_names(names) -> tuple[str, ...]:
    """The input names, checked: each is a fixed name or matches one of the patterns above."""
    names = tuple(names)
    for name in names:
        if name not in FIXED and not any(p.match(name) for p in _PATTERNS.values()):
            raise UserError(
                f"unknown forecasting input {name!r}; known: {', '.join(FIXED)}, vol_lr_K, vol_meanK_lr, vol_medK_lr, "
                "vol_stdK"
            )
    return names


def _shift(x: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """``x`` of the row ``k`` rows earlier in the same ticker; NaN for a ticker's first ``k`` rows."""
    out = np.full(len(x), np.nan)
    if k < len(x):
        out[k:] = x[: len(x) - k]
    out[pos < k] = np.nan
    return out


def _rolling_mean(volume: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last ``k`` rows of the same ticker, NaN until ``k`` rows exist (exact)."""
    lo = np.arange(len(volume), dtype=np.int64) - np.minimum(pos, k - 1)
    return _window_mean(volume, lo, k)


def _rolling_std(x: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """Population standard deviation of the last ``k`` values of the same ticker, each window on its own."""
    n = len(x)
    out = np.full(n, np.nan)
    if n >= k:
        view = sliding_window_view(x, k)  # view[i - k + 1] = x[i - k + 1 .. i]
        for s in range(0, len(view), _STD_BLOCK):
            block = view[s : s + _STD_BLOCK]
            out[s + k - 1 : s + k - 1 + len(block)] = block.std(axis=1)
    out[pos < k - 1] = np.nan
    return out


def _rolling_median(x: np.ndarray, pos: np.ndarray, k: int) -> np.ndarray:
    """Median of the last ``k`` values of the same ticker (exact: bottleneck's two-heap median), NaN until
    ``k`` rows exist; a window that would reach into the previous ticker is never full, so it is masked."""
    out = bn.move_median(x, k, min_count=k) if len(x) >= k else np.full(len(x), np.nan)
    out[pos < k - 1] = np.nan
    return out


def _positive_log(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), np.nan)


def _running_high(a: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Highest value of the last ``width`` rows of the same ticker (fewer at its start); NaN ignored."""
    n = len(a)
    out = bn.move_max(a, min(width, n), min_count=1) if n else np.empty(0)
    # A ticker's first width-1 rows would reach into the previous ticker: their own running maximum.
    ends = np.append(starts[1:], n)
    for s, e in zip(starts.tolist(), np.minimum(ends, starts + width - 1).tolist()):
        seg = a[s:e]
        out[s:e] = np.fmax.accumulate(seg) if len(seg) else seg
    return out


def _days_since_zero(volume: np.ndarray, starts: np.ndarray, cap: int) -> np.ndarray:
    n = len(volume)
    rows = np.arange(n, dtype=np.int64)
    last_zero = np.maximum.accumulate(np.where(volume == 0, rows, -1)) if n else rows
    first = np.repeat(starts, _lengths(starts, n))
    since = np.where(last_zero >= first, rows - last_zero, cap)
    return np.minimum(since, cap).astype(np.float64)


def weekday(days: np.ndarray) -> np.ndarray:
    """Monday = 0 from days since 1970-01-01 (a Thursday)."""
    return ((np.asarray(days, dtype=np.int64) + 3) % 7).astype(np.float64)


def forecast_inputs(
    starts: np.ndarray,
    days: np.ndarray,
    volume: np.ndarray,
    adj_close: np.ndarray,
    high: np.ndarray | None = None,
    low: np.ndarray | None = None,
    close: np.ndarray | None = None,
    names=None,
    price_med: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The forecasting inputs ``names`` (default ``config.FORECAST_INPUTS``) as float64 columns.

    ``days``: integer days since 1970-01-01 per row; ``volume``: int64 (or float with NaN);
    ``high``/``low``/``close``: needed only for ``range_hl``; ``price_med`` (``adj_close_rolling_med``)
    only for ``log_price_med``.
    """
    from ..config import FORECAST_INPUTS

    names = check_names(FORECAST_INPUTS if names is None else names)
    n = len(volume)
    pos = _positions(starts, n)
    volume_f = np.asarray(volume, dtype=np.float64)
    log_vol = np.log1p(np.maximum(volume_f, 0.0))
    base = np.log1p(_rolling_mean(volume, pos, BASE_WINDOW))
    out: dict[str, np.ndarray] = {}
    wanted = [c for c in names if c in CALENDAR_INPUTS]
    if wanted:
        out.update(calendar_inputs(days, wanted))
    for name in names:
        if name == LOG_VOL_MEAN30:
            out[name] = base
        elif m := _PATTERNS["lag"].match(name):
            out[name] = _shift(log_vol, pos, int(m.group(1))) - base
        elif m := _PATTERNS["mean"].match(name):
            out[name] = np.log1p(_rolling_mean(volume, pos, int(m.group(1)))) - base
        elif m := _PATTERNS["median"].match(name):
            out[name] = _rolling_median(log_vol, pos, int(m.group(1))) - base
        elif m := _PATTERNS["std"].match(name):
            out[name] = _rolling_std(log_vol, pos, int(m.group(1)))
        elif name == "return_1d":
            log_price = _positive_log(np.asarray(adj_close, dtype=np.float64))
            out[name] = log_price - _shift(log_price, pos, 1)
        elif name == "range_hl":
            if high is None or low is None or close is None:
                raise UserError("range_hl needs the High, Low and Close columns")
            close = np.asarray(close, dtype=np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[name] = np.where(
                    close > 0,
                    (np.asarray(high, np.float64) - np.asarray(low, np.float64)) / np.where(close > 0, close, 1.0),
                    np.nan,
                )
        elif name == "weekday":
            out[name] = weekday(days)
        elif name == "dist_52w_high":
            a = np.asarray(adj_close, dtype=np.float64)
            high52 = _running_high(np.where(a > 0, a, np.nan), starts, YEAR_ROWS)
            out[name] = _positive_log(a) - _positive_log(high52)
        elif name == "days_since_zero_volume":
            out[name] = _days_since_zero(volume_f, starts, YEAR_ROWS)
        elif name == PRICE_LEVEL:
            if price_med is None:
                raise UserError("log_price_med needs adj_close_rolling_med")
            with np.errstate(invalid="ignore"):
                out[name] = np.log(np.maximum(np.asarray(price_med, dtype=np.float64), 1e-4))
    return {name: out[name] for name in names}


def market_ratio_by_day(totals: np.ndarray, window: int = BASE_WINDOW) -> np.ndarray:
    """For the market's total Volume on each of a run of sorted distinct dates: log1p(total) - log1p(mean
    total of the last ``window`` dates up to it), NaN until ``window`` dates. The one rule of
    ``market_vol_lr``: training computes it from every row's Volume (``volcast.train.rows``)."""
    totals = np.asarray(totals, dtype=np.float64)
    if not len(totals):
        return totals
    return np.log1p(totals) - np.log1p(bn.move_mean(totals, window, min_count=window))


def market_volume_ratio(days: np.ndarray, volume: np.ndarray, window: int = BASE_WINDOW) -> np.ndarray:
    """Per row: ``market_ratio_by_day`` of its date, the total being the Volume of all rows with that date.
    Cross-ticker, same-day data (known at the close of day t)."""
    days = np.asarray(days, dtype=np.int64)
    _, inverse = np.unique(days, return_inverse=True)
    total = np.bincount(inverse, weights=np.asarray(volume, dtype=np.float64))
    return market_ratio_by_day(total, window)[inverse]
