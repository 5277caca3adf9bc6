"""Training stage, pure core: the supervised frame, splits, metrics, baselines, formulations.

Expected values are worked out by hand or by a second method (pandas / scikit-learn).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from volcast import train
from volcast.errors import UserError

VOL, PRICE = "vol_moving_avg", "adj_close_rolling_med"


def _frame():
    """Two tickers; AAA's first row has no features (window not full)."""
    return pd.DataFrame(
        {
            "Symbol": ["AAA", "AAA", "AAA", "AAA", "BBB", "BBB", "BBB"],
            "Date": ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-06", "2020-01-01", "2020-01-02", "2020-01-03"],
            "Volume": [10, 20, 30, 40, 100, 200, 300],
            VOL: [np.nan, 15.0, 20.0, 25.0, 100.0, 150.0, 200.0],
            PRICE: [np.nan, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0],
        }
    )


def test_next_day_target_stops_at_ticker_boundary():
    out, counts = train.make_supervised(_frame(), target_shift=1)
    # AAA: row 0 no features; rows 1, 2 get 30, 40; row 3 (last) has no target.
    # BBB: rows get 200, 300; its last row has no target (NOT AAA's or anybody's next volume).
    assert out["Symbol"].tolist() == ["AAA", "AAA", "BBB", "BBB"]
    assert out["Date"].tolist() == ["2020-01-02", "2020-01-03", "2020-01-01", "2020-01-02"]
    assert out["target"].tolist() == [30.0, 40.0, 200.0, 300.0]
    assert counts == {"rows_in": 7, "no_features": 1, "no_target": 2, "dropped": 3, "rows_out": 4}


def test_shift_two_and_same_day():
    out, counts = train.make_supervised(_frame(), target_shift=2)
    assert out["target"].tolist() == [40.0, 300.0]  # AAA row 1 -> row 3; BBB row 0 -> row 2
    assert counts["no_target"] == 4 and counts["rows_out"] == 2
    same, counts0 = train.make_supervised(_frame(), target_shift=0)
    assert same["target"].tolist() == same["Volume"].astype(float).tolist()
    assert counts0 == {"rows_in": 7, "no_features": 1, "no_target": 0, "dropped": 1, "rows_out": 6}


def test_unsorted_rows_are_ordered_first():
    shuffled = _frame().sample(frac=1.0, random_state=3)
    out, _ = train.make_supervised(shuffled, target_shift=1)
    assert out["target"].tolist() == [30.0, 40.0, 200.0, 300.0]


def test_a_ticker_split_into_two_runs_is_reordered():
    df = _frame()
    split = pd.concat([df.iloc[:2], df.iloc[4:], df.iloc[2:4]])  # AAA, AAA, BBB x3, AAA, AAA: dates in order per run
    out, _ = train.make_supervised(split, target_shift=1)
    assert out["target"].tolist() == [30.0, 40.0, 200.0, 300.0]
    swapped = df.iloc[[0, 2, 1, 3, 4, 5, 6]]  # one ticker, dates out of order
    out, _ = train.make_supervised(swapped, target_shift=1)
    assert out["target"].tolist() == [30.0, 40.0, 200.0, 300.0]


@given(st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 40), st.integers(0, 10**6)), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_target_matches_a_plain_python_lookup(rows):
    seen, unique = set(), []
    for sym, day, vol in rows:  # one row per (Symbol, Date)
        if (sym, day) not in seen:
            seen.add((sym, day))
            unique.append((sym, day, vol))
    df = pd.DataFrame(
        {
            "Symbol": [r[0] for r in unique],
            "Date": [f"2020-01-{r[1] + 1:02d}" if r[1] < 31 else f"2020-02-{r[1] - 30:02d}" for r in unique],
            "Volume": [r[2] for r in unique],
            VOL: 1.0,
            PRICE: 1.0,
        }
    )
    out, counts = train.make_supervised(df, target_shift=1)
    expected = []
    for sym in sorted(set(df["Symbol"])):
        days = sorted(df.loc[df["Symbol"] == sym, ["Date", "Volume"]].itertuples(index=False))
        expected += [(sym, days[i][0], float(days[i + 1][1])) for i in range(len(days) - 1)]
    assert list(zip(out["Symbol"], out["Date"], out["target"])) == expected
    assert counts["no_target"] == df["Symbol"].nunique()


def test_missing_column_is_a_user_error():
    with pytest.raises(UserError, match="vol_moving_avg"):
        train.make_supervised(_frame().drop(columns=[VOL]))
    with pytest.raises(UserError, match="target_shift"):
        train.make_supervised(_frame(), target_shift=-1)


# --- splits --------------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 300), min_size=2, max_size=400), st.floats(0.05, 0.95))
@settings(max_examples=80, deadline=None)
def test_chronological_split_no_test_date_before_a_train_date(days, fraction):
    days = np.array(days)
    if len(np.unique(days)) < 2:
        days = np.append(days, days[0] + 1)
    is_test, info = train.split_mask(days, "chronological", fraction)
    assert is_test.any() and (~is_test).any()
    assert days[is_test].min() > days[~is_test].max()
    distinct = np.unique(days)
    n_test = len(np.unique(days[is_test]))
    assert n_test == min(max(1, round(len(distinct) * fraction)), len(distinct) - 1)
    assert info["test_start"] == days[is_test].min()


def test_chronological_split_on_iso_strings():
    dates = [f"2021-01-{d:02d}" for d in range(1, 11)] * 3  # 10 distinct dates, 3 tickers
    df = pd.DataFrame({"Date": dates, "x": range(30)})
    tr, te, info = train.split_frame(df, "chronological", 0.2)
    assert info["test_start"] == "2021-01-09"
    assert sorted(te["Date"].unique()) == ["2021-01-09", "2021-01-10"] and len(te) == 6
    assert tr["Date"].max() < te["Date"].min()


def test_random_split_is_seeded_and_about_the_fraction():
    dates = np.arange(20_000) % 50
    a, info = train.split_mask(dates, "random", 0.2, seed=1)
    b, _ = train.split_mask(dates, "random", 0.2, seed=1)
    c, _ = train.split_mask(dates, "random", 0.2, seed=2)
    assert (a == b).all() and not (a == c).all()
    assert abs(a.mean() - 0.2) < 0.02 and info["test_start"] is None


@pytest.mark.parametrize("kind,fraction", [("future", 0.2), ("chronological", 0), ("chronological", 1.5)])
def test_bad_split_parameters(kind, fraction):
    with pytest.raises(UserError):
        train.split_mask(np.arange(10), kind, fraction)


# --- metrics and baselines ------------------------------------------------------------------------


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5000, 200).astype(float)
    y[:5] = 0  # max(y, 1) guards the percentage error
    pred = y * rng.uniform(0.5, 1.5, 200) + rng.normal(0, 50, 200)
    got = train.metrics(y, pred)
    assert got["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-12)
    assert got["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, pred)), rel=1e-12)
    assert got["r2"] == pytest.approx(r2_score(y, pred), rel=1e-12)
    apes = sorted(abs(p - t) / max(t, 1.0) for t, p in zip(y, pred))
    assert got["medape"] == pytest.approx((apes[99] + apes[100]) / 2, rel=1e-12)


def test_metrics_by_hand():
    got = train.metrics([0.0, 10.0, 20.0], [1.0, 12.0, 14.0])
    assert got["mae"] == pytest.approx(3.0)
    assert got["rmse"] == pytest.approx(math.sqrt((1 + 4 + 36) / 3))
    assert got["r2"] == pytest.approx(1 - 41 / 200)
    assert got["medape"] == pytest.approx(0.3)  # APEs 1.0 (|1-0|/max(0,1)), 0.2, 0.3


def test_baselines_use_the_same_rows_as_the_model():
    y = np.array([100.0, 200.0, 300.0])
    vol = np.array([110.0, 150.0, 330.0])
    today = np.array([90.0, 210.0, 300.0])
    pred = np.array([100.0, 190.0, 280.0])
    got = train.evaluate(y, pred, today, vol)
    assert set(got) == {"model", "baseline_vol_moving_avg", "baseline_today_volume"}
    assert got["baseline_vol_moving_avg"]["mae"] == pytest.approx((10 + 50 + 30) / 3)
    assert got["baseline_today_volume"]["mae"] == pytest.approx((10 + 10 + 0) / 3)
    assert got["model"]["mae"] == pytest.approx((0 + 10 + 20) / 3)


# --- formulations -------------------------------------------------------------------------------


@pytest.mark.parametrize("formulation", train.FORMULATIONS)
def test_formulation_round_trip(formulation):
    y = np.array([0.0, 5.0, 1234.0, 9.9e7])
    vol = np.array([0.0, 10.0, 1000.0, 5e7])
    z = train.to_model_target(formulation, y, vol)
    back = train.from_model_output(formulation, z, vol)
    np.testing.assert_allclose(back, y, rtol=1e-9, atol=1e-6)


def test_design_matrix_handles_zero_and_negative_prices():
    x = train.design_matrix([0.0, 100.0, 100.0], [0.0, -3.0, 10.0])
    assert np.isfinite(x).all() and x.shape == (3, 3)
    assert x[2, 2] == pytest.approx(math.log1p(1000.0))


def test_auto_formulation():
    assert train.resolve_formulation("catboost", "auto", "auto") == ("ratio", "MAE")
    assert train.resolve_formulation("catboost", "log_ratio", "auto") == ("log_ratio", "RMSE")
    assert train.resolve_formulation("random_forest", "auto", "auto") == ("raw", "squared_error")
    with pytest.raises(UserError):
        train.resolve_formulation("xgboost", "auto", "auto")


def test_error_by_decile_equals_a_pandas_groupby():
    """The card's table of errors per decile of actual volume, recomputed with pandas: rank-based
    deciles (ties, like the many zero volumes, split evenly by position), MAE and median APE each."""
    rng = np.random.default_rng(11)
    n = 10_007  # not a multiple of 10: deciles differ in size by one
    y = np.round(rng.lognormal(12, 1.5, n))
    y[rng.random(n) < 0.05] = 0.0  # ties at zero across the first decile
    pred, base = y * rng.lognormal(0, 0.3, n), y * rng.lognormal(0, 0.5, n)
    table = train.error_by_decile(y, pred, base)

    frame = pd.DataFrame({"y": y, "pred": pred, "base": base})
    frame["decile"] = (frame["y"].rank(method="first").to_numpy() - 1).astype(int) * 10 // n + 1
    frame["ape_model"] = (frame["pred"] - frame["y"]).abs() / frame["y"].clip(lower=1)
    frame["ape_base"] = (frame["base"] - frame["y"]).abs() / frame["y"].clip(lower=1)
    grouped = frame.groupby("decile")
    expected = pd.DataFrame(
        {
            "decile": grouped.size().index,
            "volume_from": grouped["y"].min().to_numpy(),
            "volume_to": grouped["y"].max().to_numpy(),
            "rows": grouped.size().to_numpy(),
            "mae_model": grouped.apply(lambda g: (g["pred"] - g["y"]).abs().mean()).to_numpy(),
            "mae_baseline": grouped.apply(lambda g: (g["base"] - g["y"]).abs().mean()).to_numpy(),
            "medape_model": grouped["ape_model"].median().to_numpy(),
            "medape_baseline": grouped["ape_base"].median().to_numpy(),
        }
    )
    assert table["rows"].sum() == n and table["rows"].max() - table["rows"].min() <= 1
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected, check_dtype=False, rtol=1e-12)


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).integers(-50, 20_000, 100_003).astype(np.int32),  # days, negative ones too
        np.array([7, 7, 7], np.int64),
        np.array([], np.int32),
        np.array([0, 2**40], np.int64),  # too wide to count: sorted instead
        np.array(["2020-01-02", "2019-12-31", "2020-01-02"]),
    ],
)
def test_distinct_values_equal_numpy_unique(values):
    got = train._distinct(values)
    assert got.dtype == np.unique(values).dtype
    assert np.array_equal(got, np.unique(values))


def test_market_at_gives_each_days_ratio_and_nan_for_unknown_days_with_few_or_many_rows():
    """``market_at`` by binary search (few rows) and by a table of every day (many rows): the same answers as a
    dict of day -> ratio, NaN for a day not in the market data (inside its span, before it and after it)."""
    from volcast.train.rows import market_at

    rng = np.random.default_rng(3)
    known = np.sort(rng.choice(np.arange(1000, 3000), size=700, replace=False))
    ratio = rng.normal(size=len(known))
    lookup = dict(zip(known.tolist(), ratio.tolist()))
    for n in (10, 50_000):  # 50,000 rows > 4 x the 2,000-day span: the table
        days = rng.integers(900, 3100, size=n)
        want = np.array([lookup.get(d, np.nan) for d in days.tolist()])
        np.testing.assert_array_equal(market_at((known, ratio), days), want)


def test_a_warm_start_takes_its_parents_raw_outputs_only_where_the_market_ratio_is_unchanged(tmp_path):
    """``raw_scores.for_test_rows``: the stored raw outputs go to the test rows taken from the store (by store
    position); a new row, a row the store has no output for, and every row of a day whose market ratio differs
    from the parent's get none (NaN), so they are predicted whole."""
    from volcast.train import raw_scores
    from volcast.train.params import MARKET_INPUT
    from volcast.train.rows import market_ratio

    stored_raw = np.arange(12, dtype=float).reshape(3, 4)
    raw_scores.save(tmp_path, np.array([9, 2, 5]), stored_raw[[2, 0, 1]], (150, 200))  # positions 2, 5, 9
    positions = np.array([1, 2, 5, 8, 9])  # data rows 0-4 are these store positions; rows 5 and 6 are new
    test = np.array([1, 2, 3, 4, 5, 6])
    day = np.array([100, 100, 101, 102, 102, 103, 103])
    days = np.arange(40, 104)
    totals = np.linspace(1.0, 2.0, len(days))
    same = market_ratio(days, totals)
    changed = (days, np.where(days == 102, same[1] + 0.5, same[1]))  # rows added to day 102 since the parent
    # test rows 1, 2, 4 are store positions 2, 5, 9 (stored outputs 0, 1, 2); row 3 (position 8) has none
    want = np.full((6, 4), np.nan)
    want[0], want[1], want[3] = stored_raw
    raw, trees = raw_scores.for_test_rows(tmp_path, positions, test, day, (days, totals), same, [MARKET_INPUT])
    assert trees == (150, 200)
    np.testing.assert_array_equal(raw, want)
    raw, _ = raw_scores.for_test_rows(tmp_path, positions, test, day, (days, totals), changed, [MARKET_INPUT])
    want[3] = np.nan  # row 4 is dated 102
    np.testing.assert_array_equal(raw, want)
    assert raw_scores.for_test_rows(tmp_path / "none", positions, test, day, (days, totals), same, []) is None


def test_the_row_stores_npy_files_read_back_as_saved(tmp_path):
    """``store_reads.npy_map`` (a .npy file memory-mapped whole): the saved values, shape and dtype, read-only;
    empty and Fortran-ordered arrays included."""
    from volcast.train.store_reads import npy_map

    arrays = [
        np.arange(10, dtype=np.int32),
        np.zeros((0, 21), np.float32),
        np.arange(12.0).reshape(3, 4),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.array([True, False]),
    ]
    for i, array in enumerate(arrays):
        np.save(tmp_path / f"a{i}.npy", array)
        got = npy_map(tmp_path / f"a{i}.npy")
        assert got.dtype == array.dtype and got.shape == array.shape and not got.flags.writeable
        np.testing.assert_array_equal(got, array)
