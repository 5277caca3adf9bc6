"""The train stage's rows: one read of each column needed, the split decided from the dates once, and only
the chosen rows materialised.

Pass 1 reads, per partition (its base file, then its delta files: one sequence, so a ticker's next-day
target crosses from one file into the next), the columns that decide which rows exist (Symbol and Date as
dictionaries, Volume, the two task features, ``log_vol_mean30``): the target, which rows are usable, their
dates, and each date's market total Volume. The split follows from the usable rows' distinct dates alone
(the rule of ``data.split_mask``); the fitted and validation rows are sampled (seeded) from their pools,
and the test rows are all scored unless there are more than ``max_test_rows``, in which case a seeded
uniform sample of that many is (model_eval.md says which). Pass 2 reads the forecasting inputs only, for
the chosen rows of each partition. Memory: about 40 bytes per usable row in pass 1, then only chosen rows.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..config import DATE, LOG_VOL_MEAN30, SYMBOL, VOLUME
from ..errors import UserError
from ..features.inputs import BASE_WINDOW, market_ratio_by_day
from .data import _day_numbers, _distinct, _iso, _order, _read_group, _sample, chrono_split, day_counts, feature_groups
from .params import (
    DEFAULT_MAX_TEST_ROWS,
    FEATURES,
    MARKET_INPUT,
    SPLITS,
    VALIDATION_MAX_ROWS,
    _check_fraction,
    _check_target_shift,
)

MARKET_WINDOW = BASE_WINDOW
AHEAD_DATES = 30  # validation dates whose rows are all kept for the next warm starts (volcast.train.row_store)
TEST_FORECAST_DATES = 250  # per ticker, the last test dates kept for the explorer's band
_SCAN_COLUMNS = (SYMBOL, DATE, VOLUME, *FEATURES, LOG_VOL_MEAN30)


@dataclass
class _File:
    """Pass 1 of one partition: its usable rows (compact) and its per-date Volume totals."""

    paths: list  # the partition's files: base, then deltas
    local: np.ndarray  # row number in the partition (its files concatenated in path order)
    day: np.ndarray  # int32 days since 1970-01-01
    next_day: np.ndarray  # the date of the target row (-1: none)
    ticker: np.ndarray  # run number inside the file
    names: list  # the file's tickers, by run number
    floats: np.ndarray  # (4, n): Volume, vol_moving_avg, adj_close_rolling_med, target
    counts: dict
    market_days: np.ndarray
    market_volume: np.ndarray
    tails: dict  # each ticker's last rows, which have no target yet (a later delta file gives them one)


@dataclass
class TrainRows:
    """The chosen rows (compact, in file then row order) and each role's positions among them."""

    day: np.ndarray
    next_day: np.ndarray
    ticker: np.ndarray  # index into ``tickers``
    volume: np.ndarray
    vol: np.ndarray
    price: np.ndarray
    target: np.ndarray
    x: np.ndarray  # float32, one column per ``inputs``
    inputs: tuple
    fit: np.ndarray
    valid: np.ndarray
    test: np.ndarray  # the scored test rows
    band: np.ndarray  # each ticker's last TEST_FORECAST_DATES test rows (the explorer's band)
    added: np.ndarray  # warm start: fit-pool rows dated after ``added_after_day`` (a sample if many)
    tickers: list
    files: list
    counts: dict
    rows: dict
    split_info: dict
    valid_info: dict
    dates: dict
    market: tuple = ()  # (days, market_vol_lr): see market_ratio
    seconds: dict = field(default_factory=dict)
    # Kept for a later warm start (volcast.train.row_store): every usable row of the first AHEAD_DATES
    # validation dates (the rows the next warm starts add), each ticker's last rows, the per-date counts.
    ahead: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tails: dict = field(default_factory=dict)
    store: dict = field(default_factory=dict)  # usable rows and market Volume per day, ahead_to, test_rate
    band_from: object = None  # warm start: the parent's test forecasts, which the band extends

    def cols(self, names) -> np.ndarray:
        return self.x[:, [self.inputs.index(n) for n in names]]


def _float(column) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _scan(paths: list[Path], shift: int) -> _File:
    """Pass 1 of one partition (its files read as one sequence, so targets cross from base into deltas)."""
    table = _read_group(paths, _SCAN_COLUMNS, read_dictionary=[SYMBOL, DATE])
    table = table.unify_dictionaries().combine_chunks()
    n = table.num_rows
    sym = table[SYMBOL].chunk(0) if table[SYMBOL].num_chunks else pa.array([], pa.dictionary(pa.int32(), pa.string()))
    codes = sym.indices.fill_null(-1).to_numpy(zero_copy_only=False) if n else np.zeros(0, np.int32)
    day = _day_numbers(table[DATE].chunk(0)) if n else np.zeros(0, np.int32)
    order = _order(codes, day, sym.dictionary) if n else None
    if order is not None:
        codes, day = codes[order], day[order]
    new_run = codes[1:] != codes[:-1]
    run = np.concatenate([[0], np.cumsum(new_run)]) if n else np.zeros(0, np.int64)
    firsts = np.concatenate([[0], np.flatnonzero(new_run) + 1]) if n else np.zeros(0, np.int64)
    take = (lambda c: _float(table[c])) if order is None else (lambda c: _float(table[c])[order])
    volume, vol, price, base = (take(c) for c in (VOLUME, *FEATURES, LOG_VOL_MEAN30))
    target = np.full(n, np.nan)
    next_day = np.full(n, -1, np.int32)
    if 0 < shift < n:
        same = run[shift:] == run[:-shift]
        target[:-shift] = np.where(same, volume[shift:], np.nan)
        next_day[:-shift] = np.where(same, day[shift:], -1)
    elif shift == 0:
        target, next_day = volume.copy(), day.copy()
    has_features = np.isfinite(vol) & np.isfinite(price) & np.isfinite(base)
    has_target = ~np.isnan(target)
    keep = has_features & has_target
    counts = {
        "rows_in": n,
        "no_features": int((~has_features).sum()),
        "no_target": int((has_features & ~has_target).sum()),
        "dropped": int((~keep).sum()),
        "rows_out": int(keep.sum()),
    }
    ok_volume = np.isfinite(volume)
    mdays, inverse = np.unique(day[ok_volume], return_inverse=True)
    mvol = np.bincount(inverse, weights=volume[ok_volume], minlength=len(mdays))
    rows = np.flatnonzero(keep)
    local = rows if order is None else order[rows]
    names = [str(s) for s in sym.dictionary.take(pa.array(codes[firsts])).to_pylist()]
    tail = np.zeros(n, bool)  # a ticker's last ``shift`` rows: their target is in a file not written yet
    if shift:
        tail[:] = True
        if shift < n:
            tail[:-shift] = ~same
    t_rows = np.flatnonzero(tail)
    tails = {
        "local": t_rows if order is None else order[t_rows],
        "day": day[t_rows],
        "ticker": run[t_rows].astype(np.int32),
        "has_features": has_features[t_rows],
        "floats": np.vstack([volume[t_rows], vol[t_rows], price[t_rows], base[t_rows]]),
    }
    return _File(
        list(paths),
        local.astype(np.int64),
        day[rows],
        next_day[rows],
        run[rows].astype(np.int32),
        names,
        np.vstack([volume[rows], vol[rows], price[rows], target[rows]]),
        counts,
        mdays,
        mvol,
        tails,
    )


def market_ratio(days: np.ndarray, totals: np.ndarray, window: int = MARKET_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """``(days, market_vol_lr)`` for sorted distinct days and the market's total Volume on each (the rule is
    ``features.inputs.market_ratio_by_day``)."""
    return np.asarray(days), market_ratio_by_day(totals, window)


def market_at(market: tuple[np.ndarray, np.ndarray], days) -> np.ndarray:
    """The market ratio of each of ``days`` (NaN for a date not in the data)."""
    known, ratio = market
    days = np.asarray(days, dtype=np.int64)
    if not len(known):
        return np.full(len(days), np.nan)
    at = np.clip(np.searchsorted(known, days), 0, len(known) - 1)
    return np.where(known[at] == days, ratio[at], np.nan)


def _band(ticker: np.ndarray, is_test: np.ndarray) -> np.ndarray:
    """Positions of each ticker's last TEST_FORECAST_DATES test rows (rows in ticker runs, by date)."""
    rows = np.flatnonzero(is_test)
    tk = ticker[rows]
    n = len(tk)
    if not n:
        return rows
    ends = np.append(np.flatnonzero(tk[1:] != tk[:-1]) + 1, n)
    from_end = np.repeat(ends, np.diff(np.append(0, ends))) - np.arange(n)
    return rows[from_end <= TEST_FORECAST_DATES]


def load_rows(
    features_dir: str | os.PathLike,
    inputs,
    *,
    target_shift: int = 1,
    split: str = "chronological",
    test_fraction: float = 0.2,
    validation_fraction: float = 0.1,
    max_train_rows: int = 300_000,
    max_test_rows: int = DEFAULT_MAX_TEST_ROWS,
    seed: int = 42,
    threads: int = 1,
    added_after_day: int | None = None,
) -> TrainRows:
    """Every role's rows of the features dataset (see the module docstring).

    ``added_after_day`` (warm start): ``added`` = the fit-pool rows dated after this day (every one, or a seeded
    sample of ``max_train_rows`` when more); ``rows["added"]`` counts them all.
    """
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    shift = _check_target_shift(target_shift)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    validation_fraction = _check_fraction("validation_fraction", validation_fraction)
    inputs = tuple(inputs)
    groups = list(feature_groups(Path(features_dir)).values())
    files = [path for paths in groups for path in paths]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        scans = list(pool.map(lambda paths: _scan(paths, shift), groups))
    counts = {k: sum(s.counts[k] for s in scans) for k in scans[0].counts}
    usable = counts["rows_out"]
    if usable == 0:
        raise UserError(
            f"no usable rows in {features_dir}: every row lacks features (fewer than a full window of "
            "rows per ticker?) or a target; use more history or a smaller window"
        )
    mdays, inverse = np.unique(np.concatenate([s.market_days for s in scans]), return_inverse=True)
    market_totals = np.bincount(inverse, weights=np.concatenate([s.market_volume for s in scans]))
    market = market_ratio(mdays, market_totals)
    scan_seconds = time.perf_counter() - t0

    # The split: from the distinct usable dates, counted once (chronological), or seeded per row (random).
    day_all = [s.day for s in scans]
    if split == "chronological":
        distinct = _distinct(np.concatenate([_distinct(d) for d in day_all if len(d)]))
        split_info, valid_info, test_start, valid_start = chrono_split(
            distinct, test_fraction, validation_fraction, seed
        )
        is_test = [d >= test_start for d in day_all]
        is_valid = [(d >= valid_start) & (d < test_start) for d in day_all]
        ahead_days = distinct[(distinct >= valid_start) & (distinct < test_start)][:AHEAD_DATES]
        ahead_to = int(ahead_days[-1]) if len(ahead_days) else int(valid_start) - 1
        is_ahead = [(d >= valid_start) & (d <= ahead_to) for d in day_all]
    else:
        split_info = {"kind": split, "test_fraction": test_fraction, "test_start": None}
        flat_test = np.random.default_rng(seed).random(usable) < test_fraction
        flat_valid = np.random.default_rng(seed + 1).random(int((~flat_test).sum())) < validation_fraction
        valid_full = np.zeros(usable, bool)
        valid_full[np.flatnonzero(~flat_test)[flat_valid]] = True
        bounds = np.cumsum([0] + [len(d) for d in day_all])
        is_test = [flat_test[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        is_valid = [valid_full[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        valid_info = {"test_start": None}
        is_ahead = [np.zeros(len(d), bool) for d in day_all]
        ahead_to = None
    n_test = sum(int(t.sum()) for t in is_test)
    if n_test in (0, usable):
        empty = "train" if n_test == usable else "test"
        raise UserError(f"the {split} split left no {empty} rows; change test_fraction")
    is_fit = [~t & ~v for t, v in zip(is_test, is_valid)]
    n_fit_pool = sum(int(f.sum()) for f in is_fit)
    n_valid_pool = sum(int(v.sum()) for v in is_valid)
    if not n_fit_pool:
        raise UserError("no train rows left after carving the validation slice; lower validation_fraction")

    # Samples (seeded) over the pools in file order.
    rng = np.random.default_rng(seed)
    fit_pick = _sample(n_fit_pool, max_train_rows, rng)
    is_added = [
        f & (s.day > (added_after_day if added_after_day is not None else np.iinfo(np.int32).max))
        for s, f in zip(scans, is_fit)
    ]
    n_added = sum(int(a.sum()) for a in is_added)
    added_pick = _sample(n_added, max_train_rows, np.random.default_rng(seed + 3))
    valid_pick = _sample(n_valid_pool, VALIDATION_MAX_ROWS, rng)
    test_pick = _sample(n_test, max_test_rows, np.random.default_rng(seed + 2))

    def per_file(masks, picks):
        sizes = np.cumsum([0] + [int(m.sum()) for m in masks])
        out = []
        for k, m in enumerate(masks):
            lo, hi = np.searchsorted(picks, [sizes[k], sizes[k + 1]])
            out.append(np.flatnonzero(m)[picks[lo:hi] - sizes[k]])
        return out

    fit_rows, valid_rows, test_rows = (
        per_file(is_fit, fit_pick),
        per_file(is_valid, valid_pick),
        per_file(is_test, test_pick),
    )
    added_rows = per_file(is_added, added_pick)
    ahead_rows = [np.flatnonzero(a) for a in is_ahead]
    band_rows = [_band(s.ticker, t) for s, t in zip(scans, is_test)]
    dates = {
        name: _pool_range([s.day[m] for s, m in zip(scans, masks)])
        for name, masks in (("train", is_fit), ("validation", is_valid), ("test", is_test), ("added", is_added))
    }
    usable_days, usable_counts = day_counts(day_all)
    del is_test, is_valid, is_fit, is_added, is_ahead, day_all

    # Pass 2: the inputs of the chosen rows only.
    file_inputs = [n for n in inputs if n != MARKET_INPUT]
    chosen = [
        np.unique(np.concatenate(parts))
        for parts in zip(fit_rows, valid_rows, test_rows, band_rows, added_rows, ahead_rows)
    ]

    def read_inputs(k: int) -> tuple[np.ndarray, np.ndarray]:
        s, tails = scans[k], scans[k].tails
        if not len(chosen[k]) and not len(tails["local"]):
            return np.zeros((0, len(inputs)), np.float32), np.zeros((0, len(inputs)), np.float32)
        table = _read_group(s.paths, file_inputs)
        outs = []
        for take, days in ((s.local[chosen[k]], s.day[chosen[k]]), (tails["local"], tails["day"])):
            out = np.empty((len(take), len(inputs)), np.float32)
            for j, name in enumerate(inputs):
                out[:, j] = market_at(market, days) if name == MARKET_INPUT else table[name].to_numpy()[take]
            outs.append(out)
        return outs[0], outs[1]

    t1 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        xs, x_tails = zip(*pool.map(read_inputs, range(len(scans))))
    inputs_seconds = time.perf_counter() - t1

    tickers: list[str] = []
    parts: dict[str, list] = {k: [] for k in ("day", "next_day", "ticker", "floats")}
    roles: dict[str, list] = {k: [] for k in ("fit", "valid", "test", "band", "added", "ahead")}
    tail_parts: dict[str, list] = {k: [] for k in ("day", "ticker", "has_features", "floats")}
    at = 0
    for k, s in enumerate(scans):
        c = chosen[k]
        parts["day"].append(s.day[c])
        parts["next_day"].append(s.next_day[c])
        parts["ticker"].append(s.ticker[c] + len(tickers))
        parts["floats"].append(s.floats[:, c])
        for name, rows in (
            ("fit", fit_rows[k]),
            ("valid", valid_rows[k]),
            ("test", test_rows[k]),
            ("band", band_rows[k]),
            ("added", added_rows[k]),
            ("ahead", ahead_rows[k]),
        ):
            roles[name].append(np.searchsorted(c, rows) + at)
        for name in tail_parts:
            tail_parts[name].append(s.tails[name] + len(tickers) if name == "ticker" else s.tails[name])
        tickers.extend(s.names)
        at += len(c)
    floats = np.concatenate(parts["floats"], axis=1)
    pools = {
        "usable": usable,
        "train_period": n_fit_pool + n_valid_pool,
        "fit_pool": n_fit_pool,
        "validation_pool": n_valid_pool,
        "test": n_test,
        "added": n_added,
    }
    return TrainRows(
        np.concatenate(parts["day"]),
        np.concatenate(parts["next_day"]),
        np.concatenate(parts["ticker"]),
        floats[0],
        floats[1],
        floats[2],
        floats[3],
        np.concatenate(xs),
        inputs,
        *(np.concatenate(roles[r]).astype(np.int64) for r in ("fit", "valid", "test", "band", "added")),
        tickers,
        files,
        counts,
        pools,
        split_info,
        valid_info,
        dates,
        market,
        {"scan": round(scan_seconds, 2), "inputs": round(inputs_seconds, 2)},
        np.concatenate(roles["ahead"]).astype(np.int64),
        {
            **{k: np.concatenate(v, axis=-1) for k, v in tail_parts.items()},
            "x": np.concatenate(x_tails),
        },
        {
            "usable_days": usable_days,
            "usable_counts": usable_counts,
            "market_days": mdays,
            "market_volume": market_totals,
            "ahead_to": ahead_to,
            "test_rate": len(test_pick) / n_test,
        },
    )


def _pool_range(days: list) -> list:
    lows = [int(d.min()) for d in days if len(d)]
    highs = [int(d.max()) for d in days if len(d)]
    return [_iso(min(lows)), _iso(max(highs))] if lows else [None, None]
