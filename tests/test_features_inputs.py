"""The forecasting inputs: values worked out by hand on tiny frames, no look-ahead, and the stage's
latest-row table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from volcast import config, features
from volcast.features import inputs as inputs_mod

NAN = math.nan
L = np.log1p
# Every input name the kernels know, with short windows so a small frame reaches them.
ALL = (
    "log_vol_mean30",
    "vol_lr_0",
    "vol_lr_1",
    "vol_lr_2",
    "vol_lr_3",
    "vol_mean2_lr",
    "vol_med2_lr",
    "vol_med3_lr",
    "vol_std2",
    "return_1d",
    "range_hl",
    "weekday",
    "dist_52w_high",
    "days_since_zero_volume",
)


def tiny() -> pd.DataFrame:
    """Two tickers of 3 rows (Mon-Wed). B follows A: a window that ignored tickers would mix them."""
    return pd.DataFrame(
        {
            "Symbol": ["A", "A", "A", "B", "B", "B"],
            "Date": ["2020-01-06", "2020-01-07", "2020-01-08"] * 2,
            "High": [11.0, 12.0, 10.0, 2.0, 2.0, 2.0],
            "Low": [9.0, 10.0, 9.0, 1.0, 1.5, 1.0],
            "Close": [10.0, 11.0, 10.0, 1.0, 2.0, 4.0],
            "Adj Close": [10.0, 11.0, 9.9, 1.0, 2.0, 0.0],
            "Volume": [100, 0, 300, 7, 8, 9],
        }
    )


def close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(expected, float), rtol=1e-12, equal_nan=True)


def test_hand_worked_values_on_three_rows(monkeypatch):
    # A 2-row base window instead of 30 lets 3 rows reach every input; the rule is the same.
    monkeypatch.setattr(inputs_mod, "BASE_WINDOW", 2)
    out = features.add_features(tiny(), window=2, inputs=ALL)
    # Base = log1p(mean Volume of the last 2 rows): A: -, (100+0)/2, (0+300)/2; B: -, 7.5, 8.5.
    base = [NAN, L(50), L(150), NAN, L(7.5), L(8.5)]
    close(out["log_vol_mean30"], base)
    close(out["vol_lr_0"], [NAN, L(0) - L(50), L(300) - L(150), NAN, L(8) - L(7.5), L(9) - L(8.5)])
    close(out["vol_lr_1"], [NAN, L(100) - L(50), L(0) - L(150), NAN, L(7) - L(7.5), L(8) - L(8.5)])
    close(out["vol_lr_2"], [NAN, NAN, L(100) - L(150), NAN, NAN, L(7) - L(8.5)])
    close(out["vol_lr_3"], [NAN] * 6)  # no ticker has 4 rows
    # mean2 is the base itself: ratio 0 wherever it exists.
    close(out["vol_mean2_lr"], [NAN, 0, 0, NAN, 0, 0])
    # Median of log1p(Volume) over 2 rows = the mean of the two logs; over 3 rows the middle one (A: 100 of
    # 100, 0, 300; B: 8 of 7, 8, 9), each minus the base.
    close(
        out["vol_med2_lr"],
        [NAN, L(100) / 2 - L(50), L(300) / 2 - L(150), NAN, (L(7) + L(8)) / 2 - L(7.5), (L(8) + L(9)) / 2 - L(8.5)],
    )
    close(out["vol_med3_lr"], [NAN, NAN, L(100) - L(150), NAN, NAN, L(8) - L(8.5)])
    # Population std of log1p(Volume) over 2 rows = |a - b| / 2.
    close(out["vol_std2"], [NAN, L(100) / 2, L(300) / 2, NAN, (L(8) - L(7)) / 2, (L(9) - L(8)) / 2])
    # log(Adj Close / previous); B's last price is 0: no log return.
    close(out["return_1d"], [NAN, math.log(11 / 10), math.log(9.9 / 11), NAN, math.log(2.0), NAN])
    close(out["range_hl"], [0.2, 2 / 11, 0.1, 1.0, 0.25, 0.25])
    close(out["weekday"], [0, 1, 2, 0, 1, 2])  # 2020-01-06 was a Monday
    # log(price / highest price so far, within the ticker); B's 0 price has none.
    close(out["dist_52w_high"], [0, 0, math.log(9.9 / 11), 0, 0, NAN])
    # Rows since the last zero-volume row; 252 = none in the last 252 rows (B's never had one; A's first row
    # came before A's zero).
    close(out["days_since_zero_volume"], [252, 0, 1, 252, 252, 252])


def test_inputs_do_not_depend_on_the_task_window():
    a = features.add_features(tiny(), window=2, inputs=("vol_lr_1", "return_1d"))
    b = features.add_features(tiny(), window="30D", inputs=("vol_lr_1", "return_1d"))
    pd.testing.assert_frame_equal(a[["vol_lr_1", "return_1d"]], b[["vol_lr_1", "return_1d"]])


def test_unknown_input_and_missing_range_columns_are_user_errors():
    from volcast.errors import UserError

    with pytest.raises(UserError, match="unknown forecasting input"):
        features.add_features(tiny(), inputs=("tomorrows_volume",))
    with pytest.raises(UserError, match="High"):
        features.add_features(tiny().drop(columns=["High"]), inputs=("range_hl",))


def market(n_tickers: int = 3, rows: int = 90, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(n_tickers):
        price = 20 * np.exp(np.cumsum(rng.normal(0, 0.02, rows)))
        volume = rng.integers(0, 10**6, rows)
        volume[rng.random(rows) < 0.05] = 0
        parts.append(
            pd.DataFrame(
                {
                    "Symbol": f"T{k}",
                    "Date": pd.bdate_range("2021-01-01", periods=rows).strftime("%Y-%m-%d"),
                    "High": price * 1.02,
                    "Low": price * 0.97,
                    "Close": price,
                    "Adj Close": price,
                    "Volume": volume,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


NO_LOOKAHEAD = (
    *config.FORECAST_INPUTS,
    "vol_lr_7",
    "vol_std10",
    "vol_med10_lr",
    "vol_med45_lr",
    "dist_52w_high",
    "days_since_zero_volume",
)


@pytest.mark.parametrize("cut", [0, 1, 29, 30, 31, 60, 88])
def test_no_input_uses_a_later_row(cut):
    """Change every row after ``cut`` (per ticker) or drop them: the inputs of rows up to ``cut`` must not
    change, bit for bit."""
    df = market()
    full = features.add_features(df, inputs=NO_LOOKAHEAD)
    pos = df.groupby("Symbol").cumcount().to_numpy()
    later = pos > cut
    rng = np.random.default_rng(cut)
    changed = df.copy()
    for col in ("High", "Low", "Close", "Adj Close"):
        changed.loc[later, col] = changed.loc[later, col] * rng.uniform(0.1, 10, later.sum())
    changed.loc[later, "Volume"] = rng.integers(0, 10**9, later.sum())
    early = ~later
    for variant in (
        features.add_features(changed, inputs=NO_LOOKAHEAD),
        features.add_features(df[early].sample(frac=1, random_state=2), inputs=NO_LOOKAHEAD).sort_index(),
    ):
        for name in (config.VOL_FEATURE, config.PRICE_FEATURE, *NO_LOOKAHEAD):
            np.testing.assert_array_equal(
                variant.loc[df.index[early], name].to_numpy(), full.loc[early, name].to_numpy(), err_msg=name
            )


def test_the_30_row_base_starts_at_the_30th_row():
    df = market(1, 40)
    out = features.add_features(df)
    assert out["log_vol_mean30"].isna().sum() == 29
    np.testing.assert_allclose(out["log_vol_mean30"].iloc[29], np.log1p(df["Volume"].iloc[:30].mean()), rtol=1e-15)
    # With the default window the base is the task column, exactly.
    np.testing.assert_array_equal(out["log_vol_mean30"].to_numpy(), np.log1p(out[config.VOL_FEATURE].to_numpy()))


@pytest.mark.parametrize("k", [2, 10, 30, 31])
def test_volume_median_matches_pandas_rolling_median(k):
    """A second method: pandas' groupby-rolling median of log1p(Volume) (a skip list, not bottleneck's two
    heaps), NaN until k rows, minus the 30-row base."""
    df = market(3, 70)
    out = features.add_features(df, inputs=("log_vol_mean30", f"vol_med{k}_lr"))
    expected = (
        np.log1p(df["Volume"].astype(float)).groupby(df["Symbol"]).rolling(k, min_periods=k).median().to_numpy()
        - out["log_vol_mean30"].to_numpy()
    )
    close(out[f"vol_med{k}_lr"], expected)
    assert out[f"vol_med{k}_lr"].notna().sum() == 3 * (70 - max(k, 30) + 1)


def test_market_volume_ratio_by_hand():
    # Totals per date: d0: 10, d1: 30, d2: 60; 2-date mean: -, 20, 45.
    days = np.array([0, 0, 1, 1, 2, 2])
    volume = np.array([4, 6, 10, 20, 30, 30])
    got = features.market_volume_ratio(days, volume, window=2)
    close(got, [NAN, NAN, L(30) - L(20), L(30) - L(20), L(60) - L(45), L(60) - L(45)])


def _day(iso: str) -> int:
    return int((np.datetime64(iso) - np.datetime64("1970-01-01")).astype(int))


def test_market_holidays_match_the_published_nyse_calendars():
    from volcast.features.calendar import holidays

    # NYSE's published holiday calendars (nyse.com, "Holidays & Trading Hours").
    published = {
        2019: [
            "2019-01-01",
            "2019-01-21",
            "2019-02-18",
            "2019-04-19",
            "2019-05-27",
            "2019-07-04",
            "2019-09-02",
            "2019-11-28",
            "2019-12-25",
        ],
        2021: [
            "2021-01-01",
            "2021-01-18",
            "2021-02-15",
            "2021-04-02",
            "2021-05-31",
            "2021-07-05",
            "2021-09-06",
            "2021-11-25",
            "2021-12-24",
        ],  # July 4th on a Sunday -> Monday; Christmas on a Saturday -> Friday
        2022: [
            "2022-01-17",
            "2022-02-21",
            "2022-04-15",
            "2022-05-30",
            "2022-06-20",
            "2022-07-04",
            "2022-09-05",
            "2022-11-24",
            "2022-12-26",
        ],  # New Year's Day on a Saturday: not observed; Juneteenth from 2022
    }
    for year, days in published.items():
        assert sorted(d.isoformat() for d in holidays(year)) == days


def test_target_day_calendar_inputs_by_hand():
    # Each row's inputs describe the NEXT trading day after its date.
    cases = {  # date: (weekday, gap, expiration, month end, pre-holiday) of the next trading day
        "2019-03-14": (4, 1, 2, 0, 0),  # -> Fri 2019-03-15: third Friday of March (quarterly expiration)
        "2019-04-17": (3, 1, 1, 0, 1),  # -> Thu 2019-04-18: expiration moved from Good Friday, a holiday follows
        "2019-04-18": (0, 4, 0, 0, 0),  # -> Mon 2019-04-22 over Good Friday and the weekend
        "2019-06-27": (4, 1, 0, 2, 0),  # -> Fri 2019-06-28: last trading day of June (quarter end)
        "2019-07-02": (2, 1, 0, 0, 1),  # -> Wed 2019-07-03: July 4th follows
        "2019-11-27": (4, 2, 0, 1, 0),  # -> Fri 2019-11-29 after Thanksgiving, last trading day of November
        "2019-12-20": (0, 3, 0, 0, 0),  # -> Mon 2019-12-23 (a plain Monday)
        "2019-12-23": (1, 1, 0, 0, 1),  # -> Tue 2019-12-24: Christmas follows
    }
    frame = pd.DataFrame(
        {"Symbol": "A", "Date": list(cases), "High": 1.0, "Low": 1.0, "Close": 1.0, "Adj Close": 1.0, "Volume": 1}
    )
    names = ("next_weekday", "next_gap_days", "next_expiration", "next_month_end", "next_pre_holiday")
    out = features.add_features(frame, inputs=names)
    close(out[list(names)].to_numpy(), np.array(list(cases.values()), dtype=float))


def test_price_level_is_the_log_of_the_rolling_median():
    frame = tiny()
    out = features.add_features(frame, window=2, min_periods=1, inputs=("log_price_med",))
    # Adj Close medians over 2 rows: A: 10, 10.5, 10.45; B: 1, 1.5, 1.0 (median of 2.0 and 0.0)
    close(out["log_price_med"], np.log([10.0, 10.5, 10.45, 1.0, 1.5, 1.0]))
