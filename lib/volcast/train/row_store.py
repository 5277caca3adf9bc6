"""The warm start's row store: what a train run keeps beside the models so that the next warm start reads only
the features files written since (a daily update's delta files), not every row again.

Kept for the newest model only, in ``DIR/models/.warm_cache/<model_id>/`` (hidden: not a model, never pushed to
a remote store; ``meta.json``, ``state.npz``, one directory of ``.npy`` files per segment of rows, read
memory-mapped so that only the rows taken are copied, and the models' raw test outputs, ``raw_scores``):

- the files it read, each by name, size and mtime (a dataset version hard-links its unchanged partition files
  from the previous one, so they keep both) with its content digest (the card's data fingerprint);
- the usable rows per date and the market's Volume per date: the split and the market ratio follow from them;
- the rows it fitted, validated on and scored, with their inputs; every usable row of the first ``AHEAD_DATES``
  validation dates (the rows the next warm starts add to the fit pool, as the split moves forward);
- each ticker's last rows, which get their next-day target from the file that comes next.

``load_warm`` accepts the store when every file the parent read is unchanged, the other files are delta files
after them in their partitions, and the row parameters are the same. It then reads only the new files, gives
the tickers' last rows their targets from them, adds the new usable rows to the stored per-date counts, and
takes every role from the stored rows plus the new ones: the same split, market ratio, pool sizes and rows
added as a full read (tested); the test rows are the parent's still in the test period plus every new one
(a seeded share of them when the parent scored a sample of its test rows, at the parent's rate). Anything
else is a full read, and the report says why. Which members changed since the parent read them is
``row_changes``' concern (a file by name and stat, a partition's rows in the shared delta file by stamp).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from .. import storage
from . import band as BAND
from . import raw_scores as RAW
from .data import _iso, chrono_split, day_counts, feature_groups
from .forecast import TEST_FORECASTS_FILE
from .params import MARKET_INPUT
from .row_changes import features_state, file_digests, fingerprint, json_params, plan
from .rows import TrainRows, market_at, market_ratio
from .store_reads import _read_new, _Segments

CACHE_DIR = ".warm_cache"
VERSION = 2  # 2: segments as directories of .npy files (memory-mapped), raw test outputs
FIT, VALID, TEST, AHEAD = 1, 2, 4, 8  # role bits of a stored row


def _day(iso) -> int:
    return int((np.datetime64(iso) - np.datetime64("1970-01-01")).astype(int))


def cache_root(models_dir) -> Path:
    return Path(models_dir) / CACHE_DIR


def save(models_dir, model_id: str, data: TrainRows, params: dict, digests: dict) -> None:
    """Keep ``data``'s store for the next warm start (replacing the previous one).

    A full read writes all its kept rows as one segment; a warm start links its parent's segments and writes
    only its new rows as another (``data.store["segments"]``, ``["new_from"]``): a daily store costs the
    new day's rows, not a rewrite."""
    if not data.store or data.store.get("ahead_to") is None or not len(data.tails.get("day", ())):
        return  # a random split or the same-day target: nothing a warm start could reuse
    new_from = int(data.store.get("new_from", 0))
    bits = np.zeros(len(data.day), np.uint8)
    for bit, rows in ((FIT, data.fit), (VALID, data.valid), (TEST, data.test), (AHEAD, data.ahead)):
        bits[rows[rows >= new_from]] |= bit
    keep = np.flatnonzero(bits)
    segment = {
        "day": data.day[keep],
        "next_day": data.next_day[keep],
        "ticker": data.ticker[keep],
        "floats": np.vstack([data.volume[keep], data.vol[keep], data.price[keep], data.target[keep]]),
        "x": data.x[keep],
        "bits": bits[keep],
    }
    state = {
        "tickers": np.asarray(data.tickers, dtype=str),
        **{f"tail_{k}": v for k, v in data.tails.items()},
        **{k: data.store[k] for k in ("usable_days", "usable_counts", "market_days", "market_volume")},
    }
    parents = [Path(p) for p in data.store.get("segments", [])]
    meta = {
        "version": VERSION,
        "model_id": model_id,
        "params": params,
        "files": digests,
        "counts": data.counts,
        "features": data.store.get("features", {}),
        "ahead_to": data.store["ahead_to"],
        "test_rate": data.store["test_rate"],
        "segments": [p.name for p in parents] + [f"rows-{model_id}"],
    }
    root = cache_root(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for path in parents:  # a segment is a directory of .npy files: linked, not copied
            (tmp / path.name).mkdir()
            for item in path.iterdir():
                os.link(item, tmp / path.name / item.name)
        (tmp / f"rows-{model_id}").mkdir()
        for key, value in segment.items():
            np.save(tmp / f"rows-{model_id}" / f"{key}.npy", np.ascontiguousarray(value))
        with open(tmp / "state.npz", "wb") as handle:
            np.savez(handle, **state)
        if data.store.get("band") is not None:
            BAND.save(tmp, data.store["band"])
        if data.store.get("test_raw") is not None:  # by store position: the old segments' rows, then ``keep``
            test = data.test
            pos = np.empty(len(test), np.int64)
            old = test < new_from
            pos[old] = np.asarray(data.store.get("positions", np.zeros(0, np.int64)))[test[old]]
            pos[~old] = int(data.store.get("n_stored", 0)) + np.searchsorted(keep, test[~old])
            RAW.save(tmp, pos, *data.store["test_raw"])
        storage.atomic_write_json(tmp / "meta.json", meta)
        final = root / model_id
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.iterdir():  # one store: the newest model's
        if old.name != model_id:
            shutil.rmtree(old, ignore_errors=True)


def load_meta(models_dir, model_id: str) -> dict | None:
    return storage.read_json(cache_root(models_dir) / model_id / "meta.json")


def _merge(days_a, values_a, days_b, values_b) -> tuple[np.ndarray, np.ndarray]:
    days, inverse = np.unique(np.concatenate([days_a, days_b]), return_inverse=True)
    return days, np.bincount(inverse, weights=np.concatenate([values_a, values_b]).astype(np.float64))


def load_warm(
    features_dir,
    models_dir,
    parent_id: str,
    inputs,
    params: dict,
    *,
    shift: int,
    test_fraction: float,
    validation_fraction: float,
    seed: int,
    added_after_day: int,
) -> tuple[TrainRows | None, str, dict]:
    """The rows of a warm start from the parent's store and the new files: ``(rows, "", digests)``, or
    ``(None, reason, {})`` when the store does not apply (then: a full read). ``rows.band`` holds only the new
    test rows: the explorer's band keeps the parent's forecasts for the dates it scored (``band_from``)."""
    inputs = list(inputs)
    meta = load_meta(models_dir, parent_id)
    if meta is None:
        return None, f"no row store for {parent_id}", {}
    if meta.get("version") != VERSION or meta.get("params") != params:
        return None, "the parent's row store was made with other parameters or code", {}
    groups = feature_groups(Path(features_dir))
    state = features_state(features_dir)
    groups_new, reason = plan(meta, groups, state)
    if reason:
        return None, reason, {}
    if not (Path(models_dir) / parent_id / TEST_FORECASTS_FILE).exists():
        return None, f"the parent's {TEST_FORECASTS_FILE} is missing", {}
    home = cache_root(models_dir) / parent_id
    if not BAND.saved(home):
        return None, "the parent's row store has no band", {}
    with np.load(home / "state.npz", allow_pickle=False) as z:
        st = {k: z[k] for k in z.files}
    segments = [home / name for name in meta["segments"]]
    stored = _Segments(segments)
    for key in ("day", "bits"):  # what the roles are chosen by; the rest is copied out only where taken
        st[key] = stored.whole(key)
    st_tickers = [str(t) for t in st["tickers"]]
    last_day: dict = {}
    for t, d in zip(st["tail_ticker"].tolist(), st["tail_day"].tolist()):
        last_day[st_tickers[t]] = max(d, last_day.get(st_tickers[t], d))
    new = _read_new(groups_new, inputs, last_day)
    if new is None:
        return None, "a new features file holds rows dated before a ticker's stored last date", {}

    # The tickers' last stored rows, then the new rows: one sequence per ticker, in date order.
    n_tail, n_new = len(st["tail_day"]), len(new["day"])
    names = np.concatenate([np.asarray(st_tickers, dtype=object)[st["tail_ticker"]], new["name"]])
    day = np.concatenate([st["tail_day"], new["day"]]).astype(np.int32)
    floats = np.concatenate([st["tail_floats"], new["floats"]], axis=1)
    x = np.concatenate([st["tail_x"], new["x"]])
    is_new = np.arange(n_tail + n_new) >= n_tail
    uniq, code = np.unique(names.astype(str), return_inverse=True) if len(names) else (np.zeros(0, str), names)
    order = np.lexsort((day, code))
    code, day, floats, x, is_new = code[order], day[order], floats[:, order], x[order], is_new[order]
    n = len(day)
    same_run = code[1:] == code[:-1]
    if n > 1 and not bool(np.all(day[1:][same_run] > day[:-1][same_run])):
        return None, "a new features file repeats or precedes dates already stored for a ticker", {}
    volume, vol, price, base = floats
    target, next_day, tail = np.full(n, np.nan), np.full(n, -1, np.int32), np.zeros(n, bool)
    if shift == 0:
        target, next_day = volume.copy(), day.copy()
    else:
        tail[:] = True
        if shift < n:
            same = code[shift:] == code[:-shift]
            target[:-shift] = np.where(same, volume[shift:], np.nan)
            next_day[:-shift] = np.where(same, day[shift:], -1)
            tail[:-shift] = ~same
    has_features = np.isfinite(vol) & np.isfinite(price) & np.isfinite(base)
    keep = has_features & ~np.isnan(target)
    old_tail_hf = st["tail_has_features"].astype(bool)
    counts = dict(meta["counts"])
    counts["rows_in"] += n_new
    counts["no_features"] += int((~has_features).sum()) - int((~old_tail_hf).sum())
    counts["no_target"] += int((has_features & np.isnan(target)).sum()) - int(old_tail_hf.sum())
    counts["rows_out"] += int(keep.sum())
    counts["dropped"] = counts["rows_in"] - counts["rows_out"]

    ok_volume = is_new & np.isfinite(volume)
    m_new_days, m_new_inv = np.unique(day[ok_volume], return_inverse=True)
    m_new = np.bincount(m_new_inv, weights=volume[ok_volume], minlength=len(m_new_days))
    mdays, mtotals = _merge(st["market_days"], st["market_volume"], m_new_days, m_new)
    market = market_ratio(mdays, mtotals)
    k_days, k_counts = day_counts([day[keep]])
    udays, ucounts = _merge(st["usable_days"], st["usable_counts"], k_days, k_counts)
    ucounts = ucounts.astype(np.int64)
    split_info, valid_info, test_start, valid_start = chrono_split(udays, test_fraction, validation_fraction, seed)

    # Roles: the stored rows by their bits and dates, then the new usable rows by their dates.
    s_day, s_bits = st["day"], st["bits"]
    n_day = day[keep]
    after = added_after_day
    s_added = ((s_bits & AHEAD) > 0) & (s_day > after) & (s_day < valid_start)  # rows the split moved into fitting
    n_added_rows = (n_day > after) & (n_day < valid_start)
    n_added = int(ucounts[(udays > after) & (udays < valid_start)].sum())
    if int(s_added.sum()) + int(n_added_rows.sum()) != n_added:
        return None, "the rows stored ahead of the split do not cover the rows added (a full read is due)", {}
    s_ahead = (s_bits & AHEAD) > 0
    s_roles = {
        "fit": ((s_bits & FIT) > 0) | (s_ahead & (s_day < valid_start)),
        "valid": ((s_bits & (VALID | TEST)) > 0) & (s_day >= valid_start) & (s_day < test_start),
        "test": ((s_bits & TEST) > 0) & (s_day >= test_start),
        "band": np.zeros(len(s_day), bool),
        "added": s_added,
        "ahead": s_ahead & (s_day >= valid_start),
    }
    n_test_all = n_day >= test_start
    rate = float(meta["test_rate"])
    n_scored = n_test_all & (np.random.default_rng(seed + 2).random(len(n_day)) < rate) if rate < 1 else n_test_all
    n_roles = {
        "fit": n_day < valid_start,
        "valid": (n_day >= valid_start) & (n_day < test_start),
        "test": n_scored,
        "band": n_test_all,
        "added": n_added_rows,
        "ahead": (n_day >= valid_start) & (n_day <= meta["ahead_to"]),
    }
    s_take = np.flatnonzero(np.logical_or.reduce(list(s_roles.values())))
    n_take = np.flatnonzero(np.logical_or.reduce(list(n_roles.values())))
    roles = {
        r: np.concatenate([np.flatnonzero(s_roles[r][s_take]), len(s_take) + np.flatnonzero(n_roles[r][n_take])])
        for r in s_roles
    }
    tickers = list(st_tickers)
    index = {t: i for i, t in enumerate(tickers)}
    for t in uniq.tolist():
        if t not in index:
            index[t] = len(tickers)
            tickers.append(t)
    code_to_ticker = np.asarray([index[t] for t in uniq.tolist()], dtype=np.int32)
    keep_rows = np.flatnonzero(keep)[n_take]
    all_day = np.concatenate([s_day[s_take], day[keep_rows]])
    n_s = len(s_take)
    xs = np.empty((n_s + len(keep_rows), len(inputs)), np.float32)
    stored.take("x", s_take, xs[:n_s])
    xs[n_s:] = x[keep_rows]
    if MARKET_INPUT in inputs:  # every row's market ratio from this run's market totals
        xs[:, inputs.index(MARKET_INPUT)] = market_at(market, all_day)
    fl = np.empty((4, len(xs)))
    stored.take("floats", s_take, fl[:, :n_s])
    fl[:, n_s:] = np.vstack([volume, vol, price, target])[:, keep_rows]
    s_next, s_ticker = np.empty(n_s, np.int32), np.empty(n_s, np.int32)
    stored.take("next_day", s_take, s_next)
    stored.take("ticker", s_take, s_ticker)
    del stored
    pools = {
        "usable": int(ucounts.sum()),
        "train_period": int(ucounts[udays < test_start].sum()),
        "fit_pool": int(ucounts[udays < valid_start].sum()),
        "validation_pool": int(ucounts[(udays >= valid_start) & (udays < test_start)].sum()),
        "test": int(ucounts[udays >= test_start].sum()),
        "added": n_added,
    }

    def span(mask):
        d = udays[mask]
        return [_iso(d.min()), _iso(d.max())] if len(d) else [None, None]

    dates = {
        "train": span(udays < valid_start),
        "validation": span((udays >= valid_start) & (udays < test_start)),
        "test": span(udays >= test_start),
        "added": span((udays > after) & (udays < valid_start)),
    }
    t_rows = np.flatnonzero(tail)
    child_tails = {
        "day": day[t_rows],
        "ticker": code_to_ticker[code[t_rows]] if len(t_rows) else np.zeros(0, np.int32),
        "has_features": has_features[t_rows],
        "floats": floats[:, t_rows],
        "x": x[t_rows],
    }
    files = [p for paths in groups.values() for p in paths]  # partition members (see file_digests)
    rows = TrainRows(
        all_day,
        np.concatenate([s_next, next_day[keep_rows]]),
        np.concatenate([s_ticker, code_to_ticker[code[keep_rows]]]).astype(np.int32),
        fl[0],
        fl[1],
        fl[2],
        fl[3],
        xs,
        tuple(inputs),
        *(roles[r].astype(np.int64) for r in ("fit", "valid", "test", "band", "added")),
        tickers,
        files,
        counts,
        pools,
        split_info,
        valid_info,
        dates,
        market,
        {},
        roles["ahead"].astype(np.int64),
        child_tails,
        {
            "usable_days": udays,
            "usable_counts": ucounts,
            "market_days": mdays,
            "market_volume": mtotals,
            "ahead_to": meta["ahead_to"],
            "test_rate": rate,
            "segments": segments,
            "new_from": len(s_take),
            "positions": s_take,
            "n_stored": len(s_day),
            "features": state,
        },
        band_from=home,
        parent_raw=RAW.for_test_rows(
            home, s_take, roles["test"], all_day, (st["market_days"], st["market_volume"]), market, inputs
        ),
    )
    n_files = sum(len(p) for p, _ in groups_new)
    note = f"the parent's row store and the {n_files} features file(s) written since ({n_new:,} rows)"
    return rows, note, file_digests(files, meta["files"])


__all__ = ["CACHE_DIR", "cache_root", "file_digests", "fingerprint", "json_params", "load_warm", "save"]
