"""The split and the samples of the train stage, decided from pass 1's per-date counts alone (no per-row array).

Chronological: the split comes from the usable rows' distinct dates (``data.chrono_split``); every pool (fit,
validation, test, added) is a range of dates, so its size in each group is a sum of that group's per-date
counts. The seeded samples are drawn over the pools' rows in group then row order, exactly as if every row
were held (the same draws, hence the same rows): each group then gets its share of the sampled positions,
and pass 2 (``row_scan.select_rows``) finds those rows. Random: each usable row's draw is at its position in
the stream of ``default_rng(seed)`` (the validation draws: ``seed + 1``, over the non-test rows); a group jumps
to its own offset (``PCG64.advance``), so groups run in any order or thread and draw the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .data import _sample, chrono_split
from .params import VALIDATION_MAX_ROWS

AHEAD_DATES = 30  # validation dates whose rows are all kept for the next warm starts (volcast.train.row_store)
TEST_FORECAST_DATES = 250  # per ticker, the last test dates kept for the explorer's band
_CHUNK = 1 << 22  # random draws counted this many at a time
_NEVER = np.iinfo(np.int32).max


def _stream(seed: int, offset: int) -> np.random.Generator:
    """``default_rng(seed)`` moved on by ``offset`` doubles (each ``random()`` double takes one step)."""
    bits = np.random.PCG64(seed)
    bits.advance(int(offset))
    return np.random.Generator(bits)


def _count_below(seed: int, offset: int, n: int, threshold: float) -> int:
    stream, total = _stream(seed, offset), 0
    while n > 0:
        m = min(n, _CHUNK)
        total += int((stream.random(m) < threshold).sum())
        n -= m
    return total


def band(ticker: np.ndarray, is_test: np.ndarray, last: int = TEST_FORECAST_DATES) -> np.ndarray:
    """Positions of each ticker's last ``last`` test rows (rows in ticker runs, by date)."""
    rows = np.flatnonzero(is_test)
    tk = ticker[rows]
    n = len(tk)
    if not n:
        return rows
    ends = np.append(np.flatnonzero(tk[1:] != tk[:-1]) + 1, n)
    from_end = np.repeat(ends, np.diff(np.append(0, ends))) - np.arange(n)
    return rows[from_end <= last]


def _share(picks: np.ndarray, sizes) -> list:
    """Sorted positions over pools laid end to end -> each group's positions in its own pool."""
    bounds = np.cumsum([0, *sizes])
    out = []
    for k in range(len(sizes)):
        lo, hi = np.searchsorted(picks, [bounds[k], bounds[k + 1]])
        out.append(picks[lo:hi] - bounds[k])
    return out


@dataclass
class Plan:
    """The split, the pools' sizes and each group's share of the samples; ``roles_of(k)`` is pass 2's rule."""

    kind: str
    split_info: dict
    valid_info: dict
    pools: dict  # usable, train_period, fit_pool, validation_pool, test, added
    ahead_to: int | None
    test_rate: float
    picks: list = field(default_factory=list)  # per group: {"fit", "valid", "test", "added"} positions in its pools
    bounds: dict = field(default_factory=dict)  # chronological: test_start, valid_start, after
    offsets: list = field(default_factory=list)  # random: per group (usable rows before it, non-test rows before it)
    fractions: tuple = ()
    seed: int = 0
    band_dates: int = TEST_FORECAST_DATES

    def masks(self, k: int, day: np.ndarray) -> dict:
        """Pools of group ``k``'s usable rows (by day, in Symbol, Date order): test, valid, fit, added, ahead."""
        n = len(day)
        if self.kind == "chronological":
            b = self.bounds
            is_test = day >= b["test_start"]
            is_valid = (day >= b["valid_start"]) & ~is_test
            is_ahead = (day >= b["valid_start"]) & (day <= self.ahead_to)
        else:
            test_fraction, validation_fraction = self.fractions
            before, before_kept = self.offsets[k]
            is_test = _stream(self.seed, before).random(n) < test_fraction
            kept = np.flatnonzero(~is_test)
            is_valid = np.zeros(n, bool)
            is_valid[kept[_stream(self.seed + 1, before_kept).random(len(kept)) < validation_fraction]] = True
            is_ahead = np.zeros(n, bool)
        is_fit = ~is_test & ~is_valid
        is_added = is_fit & (day > self.bounds["after"])
        return {"test": is_test, "valid": is_valid, "fit": is_fit, "added": is_added, "ahead": is_ahead}

    def roles_of(self, k: int):
        """Pass 2's rule for group ``k``: usable rows' (day, ticker run) -> (role positions, pool masks)."""

        def roles(day, run):
            m = self.masks(k, day)
            picks = self.picks[k]
            out = {}
            for role in ("fit", "valid", "test", "added"):
                pool = np.flatnonzero(m[role])
                if len(picks[role]) and picks[role][-1] >= len(pool):
                    raise UserError("the features changed while the train stage read them; run it again")
                out[role] = pool[picks[role]]
            out["band"] = band(run, m["test"], self.band_dates)
            out["ahead"] = np.flatnonzero(m["ahead"])
            pools = {"train": m["fit"], "validation": m["valid"], "test": m["test"], "added": m["added"]}
            return out, pools

        return roles


def plan(
    stats: list,
    split: str,
    test_fraction: float,
    validation_fraction: float,
    max_train_rows: int,
    max_test_rows: int,
    seed: int,
    added_after_day: int | None,
    count_added=None,
) -> Plan:
    """The Plan of these groups' pass-1 statistics. ``count_added(plan)`` (random split with ``added_after_day``
    only: the added rows are not a range of dates there) gives each group's number of added rows."""
    usable = [int(s.counts["rows_out"]) for s in stats]
    after = added_after_day if added_after_day is not None else _NEVER
    sizes: dict[str, list] = {}
    if split == "chronological":
        days = np.concatenate([s.usable_days for s in stats])
        distinct = np.unique(days)
        split_info, valid_info, test_start, valid_start = chrono_split(
            distinct, test_fraction, validation_fraction, seed
        )
        ahead_days = distinct[(distinct >= valid_start) & (distinct < test_start)][:AHEAD_DATES]
        ahead_to = int(ahead_days[-1]) if len(ahead_days) else int(valid_start) - 1
        for s in stats:
            d, c = s.usable_days, s.usable_counts
            sizes.setdefault("test", []).append(int(c[d >= test_start].sum()))
            sizes.setdefault("valid", []).append(int(c[(d >= valid_start) & (d < test_start)].sum()))
            sizes.setdefault("fit", []).append(int(c[d < valid_start].sum()))
            sizes.setdefault("added", []).append(int(c[(d < valid_start) & (d > after)].sum()))
        result = Plan(split, split_info, valid_info, {}, ahead_to, 1.0)
        result.bounds = {"test_start": int(test_start), "valid_start": int(valid_start), "after": after}
    else:
        split_info = {"kind": split, "test_fraction": test_fraction, "test_start": None}
        before = np.cumsum([0, *usable])[:-1]
        tests = [_count_below(seed, int(b), n, test_fraction) for b, n in zip(before, usable)]
        kept = [n - t for n, t in zip(usable, tests)]
        before_kept = np.cumsum([0, *kept])[:-1]
        valids = [_count_below(seed + 1, int(b), n, validation_fraction) for b, n in zip(before_kept, kept)]
        result = Plan(split, split_info, {"test_start": None}, {}, None, 1.0)
        result.bounds = {"after": after}
        result.offsets = [(int(a), int(b)) for a, b in zip(before, before_kept)]
        result.fractions, result.seed = (test_fraction, validation_fraction), seed
        sizes = {"test": tests, "valid": valids, "fit": [k - v for k, v in zip(kept, valids)]}
        sizes["added"] = list(count_added(result)) if added_after_day is not None else [0] * len(stats)
    n_usable, n_test = sum(usable), sum(sizes["test"])
    if n_test in (0, n_usable):
        empty = "train" if n_test == n_usable else "test"
        raise UserError(f"the {split} split left no {empty} rows; change test_fraction")
    n_fit, n_valid, n_added = sum(sizes["fit"]), sum(sizes["valid"]), sum(sizes["added"])
    if not n_fit:
        raise UserError("no train rows left after carving the validation slice; lower validation_fraction")
    # The draws of the row-by-row reader, in its order: fit then validation from one generator.
    rng = np.random.default_rng(seed)
    fit_pick = _sample(n_fit, max_train_rows, rng)
    added_pick = _sample(n_added, max_train_rows, np.random.default_rng(seed + 3))
    valid_pick = _sample(n_valid, VALIDATION_MAX_ROWS, rng)
    test_pick = _sample(n_test, max_test_rows, np.random.default_rng(seed + 2))
    shares = {
        role: _share(pick, sizes[role])
        for role, pick in (("fit", fit_pick), ("valid", valid_pick), ("test", test_pick), ("added", added_pick))
    }
    result.picks = [{role: shares[role][k] for role in shares} for k in range(len(stats))]
    result.pools = {
        "usable": n_usable,
        "train_period": n_fit + n_valid,
        "fit_pool": n_fit,
        "validation_pool": n_valid,
        "test": n_test,
        "added": n_added,
    }
    result.test_rate = len(test_pick) / n_test
    return result
