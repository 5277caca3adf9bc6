"""One partition group of the features dataset, read for the train stage: which rows are usable and their
targets (``group_rows``), what the split needs of them (``scan_stats``: counts per date, no per-row array kept),
and the chosen rows with their inputs (``select_rows``).

A group is read through ``data._read_group`` only (its members, base then deltas, as one sequence: a ticker's
next-day target crosses from one file into the next). ``group_rows`` is the one rule both passes apply, so the
second pass sees exactly the rows the first counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..config import DATE, LOG_VOL_MEAN30, SYMBOL, VOLUME
from .data import _day_numbers, _order, _read_group
from .params import FEATURES, MARKET_INPUT

SCAN_COLUMNS = (SYMBOL, DATE, VOLUME, *FEATURES, LOG_VOL_MEAN30)
INPUT_BATCH = 6  # input columns read at a time in the second pass: a group's full columns are never all held


def _float(column) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def day_totals(day: np.ndarray, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted distinct days, rows or summed weights on each)``, counted rather than sorted. The sums run in
    row order, as ``np.unique`` + ``np.bincount`` would give them."""
    if not len(day):
        return np.zeros(0, np.int64), np.zeros(0, np.int64 if weights is None else np.float64)
    low = int(day.min())
    total = np.bincount(day - low, weights=weights)
    if weights is None:
        at = np.flatnonzero(total)
    else:
        at = np.flatnonzero(np.bincount(day - low))
    return (at + low).astype(np.int64), total[at]


def group_rows(paths, shift: int) -> dict:
    """Every row of one group in Symbol, Date order: ``local`` (row number as read), ``day``, ``run`` (ticker run
    number), ``names`` (ticker of each run), the four floats, ``target``, ``next_day``, ``keep`` (usable),
    ``has_features`` and ``tail`` (a ticker's last ``shift`` rows: their target is in a file not written yet)."""
    table = _read_group(paths, SCAN_COLUMNS, read_dictionary=[SYMBOL, DATE])
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
    volume, vol, price, base = (
        _float(table[c]) if order is None else _float(table[c])[order] for c in (VOLUME, *FEATURES, LOG_VOL_MEAN30)
    )
    names = [str(s) for s in sym.dictionary.take(pa.array(codes[firsts])).to_pylist()]
    del table, sym, codes
    target = np.full(n, np.nan)
    next_day = np.full(n, -1, np.int32)
    tail = np.zeros(n, bool)
    if 0 < shift < n:
        same = run[shift:] == run[:-shift]
        target[:-shift] = np.where(same, volume[shift:], np.nan)
        next_day[:-shift] = np.where(same, day[shift:], -1)
    elif shift == 0:
        target, next_day = volume.copy(), day.copy()
    if shift:
        tail[:] = True
        if shift < n:
            tail[:-shift] = ~same
    has_features = np.isfinite(vol) & np.isfinite(price) & np.isfinite(base)
    return {
        "local": np.arange(n, dtype=np.int64) if order is None else order.astype(np.int64),
        "day": day,
        "run": run.astype(np.int32),
        "names": names,
        "floats": (volume, vol, price, base),
        "target": target,
        "next_day": next_day,
        "has_features": has_features,
        "keep": has_features & ~np.isnan(target),
        "tail": tail,
    }


@dataclass
class GroupStats:
    """Pass 1 of one group: what the split, the pools and the market ratio need, and nothing per row (but each
    ticker's last ``shift`` rows, the tails a later delta file gives a target)."""

    paths: list
    counts: dict
    usable_days: np.ndarray
    usable_counts: np.ndarray
    market_days: np.ndarray
    market_volume: np.ndarray
    names: list
    tails: dict


def scan_stats(paths, shift: int) -> GroupStats:
    g = group_rows(paths, shift)
    keep, has_features, target = g["keep"], g["has_features"], g["target"]
    volume = g["floats"][0]
    counts = {
        "rows_in": len(keep),
        "no_features": int((~has_features).sum()),
        "no_target": int((has_features & np.isnan(target)).sum()),
        "dropped": int((~keep).sum()),
        "rows_out": int(keep.sum()),
    }
    udays, ucounts = day_totals(g["day"][keep])
    ok_volume = np.isfinite(volume)
    mdays, mvol = day_totals(g["day"][ok_volume], weights=volume[ok_volume])
    t_rows = np.flatnonzero(g["tail"])
    tails = {
        "local": g["local"][t_rows],
        "day": g["day"][t_rows],
        "ticker": g["run"][t_rows],
        "has_features": has_features[t_rows],
        "floats": np.vstack([f[t_rows] for f in g["floats"]]),
    }
    return GroupStats(list(paths), counts, udays, ucounts, mdays, mvol, g["names"], tails)


@dataclass
class GroupRows:
    """Pass 2 of one group: its chosen rows (in Symbol, Date order) and each role's positions among them."""

    day: np.ndarray
    next_day: np.ndarray
    ticker: np.ndarray  # run number inside the group
    floats: np.ndarray  # (4, n): Volume, vol_moving_avg, adj_close_rolling_med, target
    x: np.ndarray
    roles: dict
    tail_x: np.ndarray
    dates: dict  # role -> (first, last) day of the role's pool in this group, or None


def _inputs_of(paths, inputs, takes: list, days: list, market) -> list:
    """The inputs (float32) of the rows ``takes`` (row numbers as read), a few columns at a time; the market
    ratio from ``market`` by day."""
    from .rows import market_at

    outs = [np.empty((len(t), len(inputs)), np.float32) for t in takes]
    file_inputs = [n for n in inputs if n != MARKET_INPUT]
    for lo in range(0, len(file_inputs), INPUT_BATCH):
        batch = file_inputs[lo : lo + INPUT_BATCH]
        table = _read_group(paths, batch)
        for name in batch:
            column = table[name].to_numpy()
            for out, take in zip(outs, takes):
                out[:, inputs.index(name)] = column[take]
        del table
    if MARKET_INPUT in inputs:
        for out, d in zip(outs, days):
            out[:, inputs.index(MARKET_INPUT)] = market_at(market, d)
    return outs


def select_rows(paths, shift: int, roles_of, inputs: list, market, tails: dict) -> GroupRows:
    """Pass 2 of one group: ``roles_of(day, run)`` (the usable rows' days and ticker runs) gives each role's
    positions among the usable rows and each pool's mask; the chosen rows' inputs are read for them only."""
    g = group_rows(paths, shift)
    usable = np.flatnonzero(g["keep"])
    day = g["day"][usable]
    roles, pools = roles_of(day, g["run"][usable])
    dates = {name: (int(day[m].min()), int(day[m].max())) if m.any() else None for name, m in pools.items()}
    chosen = np.unique(np.concatenate(list(roles.values()))) if roles else np.zeros(0, np.int64)
    rows = usable[chosen]
    volume, vol, price, _ = g["floats"]
    floats = np.vstack([volume[rows], vol[rows], price[rows], g["target"][rows]])
    if len(rows) or len(tails["local"]):
        takes, days = [g["local"][rows], tails["local"]], [g["day"][rows], tails["day"]]
        x, tail_x = _inputs_of(paths, inputs, takes, days, market)
    else:
        x = tail_x = np.zeros((0, len(inputs)), np.float32)
    return GroupRows(
        g["day"][rows],
        g["next_day"][rows],
        g["run"][rows],
        floats,
        x,
        {name: np.searchsorted(chosen, r) for name, r in roles.items()},
        tail_x,
        dates,
    )
