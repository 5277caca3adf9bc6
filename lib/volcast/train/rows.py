"""The train stage's rows: the split decided from per-date counts, then only the chosen rows materialised, so
memory follows the sample sizes, not the number of rows.

Pass 1 (``row_scan.scan_stats``) reads, per partition group, the columns that decide which rows exist (Symbol
and Date as dictionaries, Volume, the two task features, ``log_vol_mean30``) and keeps only per-date counts of
the usable rows, the market's Volume per date, the row counts and each ticker's last rows (their target comes
from a file not written yet). The split and the seeded samples follow from those counts (``row_plan``): the
fitted and validation rows are sampled from their pools, and the test rows are all scored unless there are more
than ``max_test_rows``, in which case a seeded uniform sample of that many is (model_eval.md says which). Pass 2
(``row_scan.select_rows``) reads each group again, finds its share of every role and reads the forecasting
inputs of those rows only, a few columns at a time. Both passes run groups on ``threads`` threads; the rows
chosen do not depend on the thread count or the order groups finish in.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..features.inputs import BASE_WINDOW, market_ratio_by_day
from .data import _iso, feature_groups
from .params import DEFAULT_MAX_TEST_ROWS, SPLITS, _check_fraction, _check_target_shift
from .row_plan import AHEAD_DATES, TEST_FORECAST_DATES, plan  # noqa: F401 (re-exported)
from .row_scan import SCAN_COLUMNS as _SCAN_COLUMNS  # noqa: F401 (re-exported: row_store reads these)
from .row_scan import group_rows, scan_stats, select_rows

MARKET_WINDOW = BASE_WINDOW


def _release_freed_memory() -> None:
    """Hand the heap's freed pages back to the OS (glibc; elsewhere nothing). The passes free many arrays of a
    few MB, which glibc keeps for reuse, so without this the process would stay as large as at its busiest."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class RowSettings:
    """What decides the stage's rows (the split and the samples): passed as one value from the stage to the
    readers (``warm.read_rows`` -> ``load_rows`` / ``row_store.load_warm``)."""

    target_shift: int = 1
    split: str = "chronological"
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    max_train_rows: int = 300_000
    max_test_rows: int = DEFAULT_MAX_TEST_ROWS
    seed: int = 42

    def load_kwargs(self) -> dict:
        """``load_rows``'s keyword arguments."""
        return dict(vars(self))


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
    band_from: object = None  # warm start: the parent's row store, whose band this one extends (``band``)
    parent_raw: object = None  # warm start: (raw outputs of the test rows, tree counts) of the parent (raw_scores)

    def cols(self, names) -> np.ndarray:
        return self.x[:, [self.inputs.index(n) for n in names]]


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
    first, span = int(known[0]), int(known[-1]) - int(known[0]) + 1
    if span <= 1 << 20 and len(days) > 4 * span:  # many rows: one look-up table of every day (no binary search)
        table = np.full(span + 2, np.nan)  # [0] and [-1]: days before and after the known ones
        table[np.asarray(known, np.int64) - first + 1] = ratio
        return table[np.clip(days - first + 1, 0, span + 1)]
    at = np.clip(np.searchsorted(known, days), 0, len(known) - 1)
    return np.where(known[at] == days, ratio[at], np.nan)


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
    threads = max(1, threads)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        stats = list(pool.map(lambda paths: scan_stats(paths, shift), groups))
    counts = {k: sum(s.counts[k] for s in stats) for k in stats[0].counts}
    if counts["rows_out"] == 0:
        raise UserError(
            f"no usable rows in {features_dir}: every row lacks features (fewer than a full window of "
            "rows per ticker?) or a target; use more history or a smaller window"
        )
    mdays, inverse = np.unique(np.concatenate([s.market_days for s in stats]), return_inverse=True)
    market_totals = np.bincount(inverse, weights=np.concatenate([s.market_volume for s in stats]))
    market = market_ratio(mdays, market_totals)
    udays, inverse = np.unique(np.concatenate([s.usable_days for s in stats]), return_inverse=True)
    ucounts = np.bincount(inverse, weights=np.concatenate([s.usable_counts for s in stats])).astype(np.int64)
    scan_seconds = time.perf_counter() - t0
    _release_freed_memory()

    def count_added(p):  # random split with a warm start only: added rows are not a range of dates there
        def one(k):
            g = group_rows(groups[k], shift)
            return int(p.masks(k, g["day"][g["keep"]])["added"].sum())

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(one, range(len(groups))))

    p = plan(
        stats,
        split,
        test_fraction,
        validation_fraction,
        max_train_rows,
        max_test_rows,
        seed,
        added_after_day,
        count_added,
    )
    p.band_dates = TEST_FORECAST_DATES  # this module's, read now: tests narrow the band through it

    t1 = time.perf_counter()

    def select(k: int):
        part = select_rows(groups[k], shift, p.roles_of(k), list(inputs), market, stats[k].tails)
        _release_freed_memory()  # the group's columns, read and dropped
        return part

    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(select, range(len(groups))))
    inputs_seconds = time.perf_counter() - t1
    return _assemble(
        stats,
        parts,
        p,
        inputs,
        files,
        counts,
        market,
        (udays, ucounts, mdays, market_totals),
        {
            "scan": round(scan_seconds, 2),
            "inputs": round(inputs_seconds, 2),
        },
    )


def _assemble(stats, parts, p, inputs, files, counts, market, per_day, seconds) -> TrainRows:
    """The groups' chosen rows laid end to end (in group order), each group's arrays freed once copied."""
    n = sum(len(part.day) for part in parts)
    day, next_day, ticker = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int32)
    floats, x = np.empty((4, n)), np.empty((n, len(inputs)), np.float32)
    roles: dict[str, list] = {k: [] for k in ("fit", "valid", "test", "band", "added", "ahead")}
    tail_parts: dict[str, list] = {k: [] for k in ("day", "ticker", "has_features", "floats")}
    tail_x = []
    tickers: list[str] = []
    lows: dict[str, list] = {}
    at = 0
    for k, (s, part) in enumerate(zip(stats, parts)):
        m = len(part.day)
        day[at : at + m], next_day[at : at + m] = part.day, part.next_day
        ticker[at : at + m] = part.ticker + len(tickers)
        floats[:, at : at + m], x[at : at + m] = part.floats, part.x
        part.x = part.floats = None
        if k % 8 == 7:
            _release_freed_memory()
        for name, rows in part.roles.items():
            roles[name].append(rows + at)
        for name in tail_parts:
            tail_parts[name].append(s.tails[name] + len(tickers) if name == "ticker" else s.tails[name])
        tail_x.append(part.tail_x)
        for name, span in part.dates.items():
            if span is not None:
                lows.setdefault(name, []).append(span)
        tickers.extend(s.names)
        at += m
    dates = {
        name: [_iso(min(a for a, _ in lows[name])), _iso(max(b for _, b in lows[name]))]
        if name in lows
        else [None, None]
        for name in ("train", "validation", "test", "added")
    }
    udays, ucounts, mdays, market_totals = per_day
    _release_freed_memory()
    return TrainRows(
        day,
        next_day,
        ticker,
        floats[0],
        floats[1],
        floats[2],
        floats[3],
        x,
        tuple(inputs),
        *(np.concatenate(roles[r]).astype(np.int64) for r in ("fit", "valid", "test", "band", "added")),
        tickers,
        files,
        counts,
        p.pools,
        p.split_info,
        p.valid_info,
        dates,
        market,
        seconds,
        np.concatenate(roles["ahead"]).astype(np.int64),
        {**{k: np.concatenate(v, axis=-1) for k, v in tail_parts.items()}, "x": np.concatenate(tail_x)},
        {
            "usable_days": udays,
            "usable_counts": ucounts,
            "market_days": mdays,
            "market_volume": market_totals,
            "ahead_to": p.ahead_to,
            "test_rate": p.test_rate,
        },
    )
