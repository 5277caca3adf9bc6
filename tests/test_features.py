"""The task columns of the feature core against values worked out by hand and against a naive loop (hypothesis)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volcast import features
from volcast.errors import UserError

NAN = math.nan
VOL, MED = "vol_moving_avg", "adj_close_rolling_med"


def task_columns(df, *args, **kwargs):
    """The two task columns only (the forecasting inputs have their own tests: test_features_inputs.py)."""
    return features.add_features(df, *args, inputs=(), **kwargs)


# Three tickers; BBB (2 rows) is shorter than a 3-row window and sits between AAA and CCC, so a
# window that ignored ticker boundaries would mix BBB into CCC's first rows. Close is deliberately
# unlike Adj Close: a median of Close would show. Dates inside a ticker are irregular (for "30D").
ROWS = [
    # Symbol, Date, Close, Adj Close, Volume
    ("AAA", "2020-01-01", 50.0, 5.0, 100),
    ("AAA", "2020-01-02", 10.0, 1.0, 200),
    ("AAA", "2020-01-20", 30.0, 3.0, 600),
    ("AAA", "2020-01-31", 20.0, 2.0, 50),
    ("AAA", "2020-02-06", 80.0, 8.0, 1000),
    ("BBB", "2020-01-02", 99.0, 900.0, 7000),
    ("BBB", "2020-01-03", 98.0, 800.0, 9000),
    ("CCC", "2020-01-06", 1.0, 10.0, 7),
    ("CCC", "2020-01-07", 2.0, 20.0, 8),
    ("CCC", "2020-01-08", 4.0, 40.0, 9),
    ("CCC", "2020-01-09", 3.0, 30.0, 10),
]
# Worked by hand. Window 3, min_periods 0 (= 3): NaN for each ticker's first two rows.
#   AAA row 3: (100+200+600)/3 = 300, median(5,1,3) = 3;  row 4: (200+600+50)/3, median(1,3,2) = 2
#   row 5: (600+50+1000)/3 = 550, median(3,2,8) = 3.  BBB: never 3 rows.
#   CCC row 3: (7+8+9)/3 = 8, median(10,20,40) = 20;  row 4: (8+9+10)/3 = 9, median(20,40,30) = 30
W3 = {
    VOL: [NAN, NAN, 300.0, 850 / 3, 550.0, NAN, NAN, NAN, NAN, 8.0, 9.0],
    MED: [NAN, NAN, 3.0, 2.0, 3.0, NAN, NAN, NAN, NAN, 20.0, 30.0],
}
# Window 3, min_periods 1: partial windows from each ticker's OWN first row (CCC starts at 7, 10,
# not with BBB's values); two values give an even median: (a + b) / 2.
W3_MP1 = {
    VOL: [100.0, 150.0, 300.0, 850 / 3, 550.0, 7000.0, 8000.0, 7.0, 7.5, 8.0, 9.0],
    MED: [5.0, 3.0, 3.0, 2.0, 3.0, 900.0, 850.0, 10.0, 15.0, 20.0, 30.0],
}
# Window 2 (even medians everywhere): AAA (100+200)/2, median(5,1) = 3; (200+600)/2, median(1,3) = 2;
# (600+50)/2, median(3,2) = 2.5; (50+1000)/2, median(2,8) = 5. BBB (7000+9000)/2, median 850.
# CCC 7.5, 15; 8.5, 30; 9.5, 35.
W2 = {
    VOL: [NAN, 150.0, 400.0, 325.0, 525.0, NAN, 8000.0, NAN, 7.5, 8.5, 9.5],
    MED: [NAN, 3.0, 2.0, 2.5, 5.0, NAN, 850.0, NAN, 15.0, 30.0, 35.0],
}
# Window 4: AAA (100+200+600+50)/4 = 237.5, median(5,1,3,2) = (2+3)/2 = 2.5;
# (200+600+50+1000)/4 = 462.5, median(1,3,2,8) = 2.5. CCC (7+8+9+10)/4 = 8.5, median(10,20,40,30) = 25.
W4 = {
    VOL: [NAN, NAN, NAN, 237.5, 462.5, NAN, NAN, NAN, NAN, NAN, 8.5],
    MED: [NAN, NAN, NAN, 2.5, 2.5, NAN, NAN, NAN, NAN, NAN, 25.0],
}
# "30D": rows dated in (t - 30 days, t]; min_periods 0 means 1 for offsets (as in pandas).
#   AAA 01-01: itself; 01-02: 01-01..02 -> 150, median(5,1) = 3; 01-20: all three -> 300, 3;
#   01-31: 01-01 is exactly 30 days back, so OUT -> 01-02, 01-20, 01-31: 850/3, median(1,3,2) = 2;
#   02-06: from 01-07 on -> 01-20, 01-31, 02-06: 550, median(3,2,8) = 3.
#   BBB: 7000, 900; 8000, 850.  CCC (consecutive days): like min_periods 1 with 30 rows.
D30 = {
    VOL: [100.0, 150.0, 300.0, 850 / 3, 550.0, 7000.0, 8000.0, 7.0, 7.5, 8.0, 8.5],
    MED: [5.0, 3.0, 3.0, 2.0, 3.0, 900.0, 850.0, 10.0, 15.0, 20.0, 25.0],
}
# Same with min_periods 3: the first two rows of AAA and CCC and all of BBB are NaN.
D30_MP3 = {
    VOL: [NAN, NAN, 300.0, 850 / 3, 550.0, NAN, NAN, NAN, NAN, 8.0, 8.5],
    MED: [NAN, NAN, 3.0, 2.0, 3.0, NAN, NAN, NAN, NAN, 20.0, 25.0],
}
# A fixed shuffle of the rows: the input is neither grouped nor in date order.
SHUFFLE = [7, 3, 10, 0, 5, 9, 1, 6, 4, 8, 2]


def hand_frame(shuffled: bool = True) -> pd.DataFrame:
    df = pd.DataFrame(ROWS, columns=["Symbol", "Date", "Close", "Adj Close", "Volume"])
    if shuffled:
        df = df.iloc[SHUFFLE]
        df.index = [f"r{i}" for i in range(len(df))]  # a non-default index the result must keep
    return df


def expected_in_input_order(expected: dict, shuffled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    order = SHUFFLE if shuffled else list(range(len(ROWS)))
    return np.array(expected[VOL])[order], np.array(expected[MED])[order]


def assert_same(actual, expected) -> None:
    """Exactly equal, NaN where expected is NaN (no tolerance: the values are exact)."""
    np.testing.assert_array_equal(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float))


@pytest.mark.parametrize(
    "window,min_periods,expected",
    [
        (3, 0, W3),
        (3, 3, W3),
        (3, 1, W3_MP1),
        (2, 0, W2),
        (4, 0, W4),
        ("30D", 0, D30),
        ("30D", 3, D30_MP3),
    ],
)
@pytest.mark.parametrize("shuffled", [False, True])
def test_hand_worked_values(window, min_periods, expected, shuffled):
    df = hand_frame(shuffled)
    out = task_columns(df, window=window, min_periods=min_periods)
    vol, med = expected_in_input_order(expected, shuffled)
    assert_same(out[VOL], vol)
    assert_same(out[MED], med)
    # Same rows, same order, same index, input columns untouched, features float64.
    assert list(out.index) == list(df.index)
    pd.testing.assert_frame_equal(out[df.columns], df)
    assert out[VOL].dtype == np.float64 and out[MED].dtype == np.float64
    assert VOL not in df.columns  # the input frame is not modified


def test_default_window_is_30_rows():
    days = pd.bdate_range("2021-01-01", periods=31).strftime("%Y-%m-%d")
    df = pd.DataFrame({"Symbol": "X", "Date": days, "Adj Close": np.arange(31.0), "Volume": np.arange(31) * 2})
    out = task_columns(df)
    assert out[VOL].isna().sum() == 29
    assert out[VOL].iloc[29] == 29.0  # mean of 0, 2, ..., 58
    assert out[MED].iloc[29] == 14.5  # median of 0..29
    assert out[VOL].iloc[30] == 31.0 and out[MED].iloc[30] == 15.5


def test_arrow_table_in_arrow_table_out():
    df = hand_frame()
    table = pa.Table.from_pandas(df, preserve_index=False)
    out = task_columns(table, window=3)
    assert isinstance(out, pa.Table)
    assert out.column_names[-2:] == [VOL, MED]
    vol, med = expected_in_input_order(W3)
    assert_same(out[VOL].to_numpy(), vol)
    assert_same(out[MED].to_numpy(), med)


def test_dates_as_timestamps_and_existing_feature_columns_are_replaced():
    df = hand_frame().assign(Date=lambda d: pd.to_datetime(d["Date"]), **{VOL: -1.0, MED: -1.0})
    out = task_columns(df, window="30D")
    vol, med = expected_in_input_order(D30)
    assert_same(out[VOL], vol)
    assert_same(out[MED], med)
    assert list(out.columns) == list(df.columns)


def test_missing_values_are_skipped_like_pandas():
    # A missing Adj Close or Volume does not count toward min_periods (pandas' rule).
    df = pd.DataFrame(
        {
            "Symbol": ["A"] * 5,
            "Date": [f"2020-01-0{d}" for d in range(1, 6)],
            "Adj Close": [1.0, NAN, 3.0, 4.0, 10.0],
            "Volume": [10.0, 20.0, NAN, 40.0, 50.0],
        }
    )
    out = task_columns(df, window=3, min_periods=2)
    # Volume windows: [10] [10,20] [10,20,-] [20,-,40] [-,40,50]
    assert_same(out[VOL], [NAN, 15.0, 15.0, 30.0, 45.0])
    # Adj Close windows: [1] [1,-] [1,-,3] [-,3,4] [3,4,10]
    assert_same(out[MED], [NAN, NAN, 2.0, 3.5, 4.0])


def test_fractional_volumes_are_exact_to_rounding():
    df = pd.DataFrame(
        {
            "Symbol": ["A"] * 4,
            "Date": [f"2020-01-0{d}" for d in range(1, 5)],
            "Adj Close": [1.0, 2.0, 3.0, 4.0],
            "Volume": [0.1, 0.2, 0.3, 1e-9],
        }
    )
    out = task_columns(df, window=2)
    np.testing.assert_allclose(out[VOL].to_numpy()[1:], [0.15, 0.25, (0.3 + 1e-9) / 2], rtol=1e-15)


def test_large_whole_volumes_do_not_drift():
    # A long column of huge volumes followed by tiny ones: a running float sum (bottleneck's
    # move_mean) loses the tiny ones; integer prefix sums do not.
    n = 200_000
    volume = np.full(n, 7_000_000_000, dtype=np.int64)
    volume[-40:] = np.arange(1, 41)
    df = pd.DataFrame(
        {
            "Symbol": "X",
            "Date": pd.date_range("1500-01-01", periods=n, freq="D", unit="s"),
            "Adj Close": 1.0,
            "Volume": volume,
        }
    )
    out = task_columns(df, window=30)
    assert_same(out[VOL].to_numpy()[-5:], [(i - 29 + i) / 2 for i in range(36, 41)])


@pytest.mark.parametrize(
    "window,min_periods,message",
    [
        (0, 0, "positive number of rows"),
        (-3, 0, "positive"),
        (2.5, 0, "window"),
        (True, 0, "window"),
        ("1M", 0, "fixed offset"),
        ("banana", 0, "window"),
        (3, 4, "cannot exceed"),
        (3, -1, "min_periods"),
    ],
)
def test_bad_parameters_say_what_to_do(window, min_periods, message):
    with pytest.raises(UserError, match=message):
        task_columns(hand_frame(), window=window, min_periods=min_periods)


def test_parameters_as_papermill_may_pass_them():
    assert features.parse_window("10", "0").rows == 10
    spec = features.parse_window(" 30D ", 0)
    assert spec.span_ns == 30 * 86_400 * 10**9 and spec.min_periods == 1
    assert features.parse_window(30, 0).min_periods == 30
    assert features.parse_window("48h", 2).span_ns == 2 * 86_400 * 10**9


def test_missing_columns_and_symbols_are_user_errors():
    with pytest.raises(UserError, match="missing Adj Close"):
        task_columns(hand_frame().drop(columns="Adj Close"))
    with pytest.raises(UserError, match="Symbol"):
        task_columns(hand_frame().assign(Symbol=None))


def test_empty_frame():
    out = task_columns(hand_frame().iloc[:0])
    assert len(out) == 0 and VOL in out.columns


# ---------------------------------------------------------------------------------------------
# Property: each ticker's result equals a naive loop over its own rows.


def naive(df: pd.DataFrame, window, min_periods) -> tuple[list[float], list[float]]:
    """Row-by-row windows straight from the definition, in the input row order."""
    vol, med = [NAN] * len(df), [NAN] * len(df)
    offset = isinstance(window, str)
    span = pd.Timedelta(window) if offset else None
    need = min_periods or (1 if offset else window)
    for _, group in df.groupby("Symbol"):
        group = group.assign(_t=pd.to_datetime(group["Date"])).sort_values("_t", kind="stable")
        rows = list(zip(group["_pos"], group["_t"], group["Volume"], group["Adj Close"]))
        for i, (pos, t, _, _) in enumerate(rows):
            if offset:
                window_rows = [r for r in rows[: i + 1] if r[1] > t - span]
            else:
                window_rows = rows[max(0, i - window + 1) : i + 1]
            vols = [r[2] for r in window_rows if not math.isnan(r[2])]
            prices = [r[3] for r in window_rows if not math.isnan(r[3])]
            if len(vols) >= need:
                vol[pos] = sum(vols) / len(vols)  # whole volumes: this float sum is exact
            if len(prices) >= need:
                med[pos] = statistics.median(prices)
    return vol, med


@st.composite
def frames(draw):
    tickers = draw(st.lists(st.sampled_from(["A", "B", "BA", "C", "D"]), min_size=1, max_size=4, unique=True))
    rows = []
    for sym in tickers:
        days = draw(st.lists(st.integers(0, 60), min_size=0, max_size=14, unique=True))
        for day in days:
            price = draw(st.one_of(st.integers(1, 20).map(lambda x: x / 4), st.just(NAN)))
            volume = draw(st.one_of(st.integers(0, 10**6).map(float), st.just(NAN)))
            rows.append((sym, str(np.datetime64("2020-01-01") + day), price, volume))
    df = pd.DataFrame(rows, columns=["Symbol", "Date", "Adj Close", "Volume"])
    df = df.sample(frac=1, random_state=draw(st.integers(0, 1000))).reset_index(drop=True)
    if draw(st.booleans()):  # sometimes dense whole-number volumes, the raw dataset's case
        df = df.dropna()
        df["Volume"] = df["Volume"].astype(np.int64)
    return df.reset_index(drop=True).assign(_pos=lambda d: np.arange(len(d)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=frames(), window=st.integers(1, 6), data=st.data())
def test_rows_window_equals_naive_loop(df, window, data):
    min_periods = data.draw(st.integers(0, window))
    out = task_columns(df, window=window, min_periods=min_periods)
    vol, med = naive(df, window, min_periods)
    assert_same(out[VOL], vol)
    assert_same(out[MED], med)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(df=frames(), days=st.integers(1, 12), min_periods=st.integers(0, 4))
def test_offset_window_equals_naive_loop(df, days, min_periods):
    out = task_columns(df, window=f"{days}D", min_periods=min_periods)
    vol, med = naive(df, f"{days}D", min_periods)
    assert_same(out[VOL], vol)
    assert_same(out[MED], med)


def test_chunked_arrow_columns_give_the_same_result():
    # A dataset read from several Parquet files arrives as chunked columns: no difference allowed.
    df = hand_frame(shuffled=False)
    table = pa.Table.from_pandas(df, preserve_index=False)
    chunked = pa.concat_tables([table.slice(0, 4), table.slice(4, 3), table.slice(7)])
    assert chunked["Symbol"].num_chunks == 3
    out = task_columns(chunked, window=3, min_periods=1)
    assert_same(out[VOL].to_numpy(), W3_MP1[VOL])
    assert_same(out[MED].to_numpy(), W3_MP1[MED])
