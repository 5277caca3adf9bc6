"""Features of appended rows computed from the stored rows' tail equal a full recompute
(volcast.features.append), for row and offset windows, a new ticker and a ticker with a short history."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from volcast import config, features, ingest
from volcast.features import append as fa


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> pa.Table:
    base = tmp_path_factory.mktemp("feat-append")
    src = ingest.generate_demo_market(base / "market", n_tickers=5, years=2, seed=4)
    ingest.run(base / "out", source=str(src), jobs=1)
    return pq.read_table(base / "out" / "data" / "raw")


def _split(raw: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table, np.ndarray]:
    """Stored rows and appended rows: 0, 1, 3 new days per ticker, one ticker all new, one with 5 stored rows."""
    df = raw.to_pandas()
    tickers = sorted(df["Symbol"].unique())
    new_counts = dict(zip(tickers, [0, 1, 3, None, 2]))  # None: a ticker seen for the first time
    is_new = np.zeros(len(df), bool)
    keep = np.ones(len(df), bool)
    for t, k in new_counts.items():
        rows = np.flatnonzero(df["Symbol"].to_numpy() == t)
        if t == tickers[4]:  # a short history: only 7 rows in all, the last 2 new
            keep[rows[7:]] = False
            rows = rows[:7]
        is_new[rows if k is None else rows[len(rows) - k :]] = True
    table = pa.Table.from_pandas(df[keep], preserve_index=False)
    is_new = is_new[keep]
    return table.filter(pa.array(~is_new)), table.filter(pa.array(is_new)), table, is_new


@pytest.mark.parametrize("window", [30, 10, "30D", 300])
def test_new_rows_equal_a_full_recompute(raw, window):
    previous, new, table, is_new = _split(raw)
    got = fa.features_of_new_rows(previous, new, window).to_pandas()
    full = features.add_features(table, window).filter(pa.array(is_new))
    want = full.select(got.columns.tolist()).to_pandas()
    assert len(got) == int(is_new.sum()) > 0
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    # The stage's tail table keeps Symbol, Date, Volume and Adj Close only: the same values from it.
    slim = fa.features_of_new_rows(previous.select(fa.TAIL_SCHEMA.names), new, window).to_pandas()
    pd.testing.assert_frame_equal(slim, want, check_exact=True)
    # the comparison has teeth: rows with a full 52-week history, and values that are not all missing
    assert got["dist_52w_high"].notna().sum() > 3 and got[config.VOL_FEATURE].notna().any()


def test_a_tail_shorter_than_the_lookback_would_differ(raw, monkeypatch):
    previous, new, table, is_new = _split(raw)
    monkeypatch.setattr(fa, "lookback_rows", lambda *a, **k: 40)
    got = fa.features_of_new_rows(previous, new).to_pandas()
    want = features.add_features(table).filter(pa.array(is_new)).select(got.columns.tolist()).to_pandas()
    assert not got["dist_52w_high"].equals(want["dist_52w_high"])


def test_a_short_pass_tail_shorter_than_its_lookback_would_differ(raw, monkeypatch):
    previous, new, table, is_new = _split(raw)
    monkeypatch.setattr(fa, "short_lookback_rows", lambda *a, **k: 20)
    got = fa.features_of_new_rows(previous, new).to_pandas()
    want = features.add_features(table).filter(pa.array(is_new)).select(got.columns.tolist()).to_pandas()
    assert not got["vol_std30"].equals(want["vol_std30"])
    assert got["dist_52w_high"].equals(want["dist_52w_high"])  # the 52-week pass has its own, longer tail


def test_lookback_covers_the_longest_window():
    assert fa.short_lookback_rows() == 30  # the 30-row inputs and the task window
    assert fa.short_lookback_rows(45) == 45
    assert fa.lookback_rows() == 252  # inputs.YEAR_ROWS: the 52-week inputs
    assert fa.lookback_rows(300) == 300
    assert fa.lookback_rows("400D") == 400  # at most one row per date
    assert fa.lookback_rows(inputs=("vol_lr_260",)) == 260


def test_zero_volumes_and_missing_prices_near_the_52_week_edge_equal_a_full_recompute(raw):
    """The 52-week inputs read exactly ``YEAR_ROWS`` rows: zero volumes and non-positive prices put just inside
    and just outside that window (in the stored rows and among the new ones) give the full recompute's values."""
    df = raw.to_pandas()
    tickers = sorted(df["Symbol"].unique())
    volume, price = df["Volume"].to_numpy().copy(), df["Adj Close"].to_numpy().copy()
    long = [t for t in tickers[:4] if (df["Symbol"] == t).sum() > 260]  # tickers[4] is cut short by _split
    assert len(long) >= 2
    for k, t in enumerate(long):
        rows = np.flatnonzero(df["Symbol"].to_numpy() == t)
        for back in (1 + k, 250, 251, 252, 253):  # rows before the ticker's last row
            volume[rows[-1 - back]] = 0
        price[rows[-252 - k]] = price[rows[-1:]].max() * 10  # a high that leaves the window for k >= 1
        price[rows[-2]] = 0.0 if k == 0 else -1.0
    df["Volume"], df["Adj Close"] = volume, price
    changed = pa.Table.from_pandas(df, preserve_index=False).cast(raw.schema)
    previous, new, table, is_new = _split(changed)
    inputs = (*config.FORECAST_INPUTS, "days_since_zero_volume")  # not a default input
    got = fa.features_of_new_rows(previous, new, inputs=inputs).to_pandas()
    full = features.add_features(table, inputs=inputs).filter(pa.array(is_new))
    want = full.select(got.columns.tolist()).to_pandas()
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert set(got["days_since_zero_volume"]) > {float(fa.YEAR_ROWS)}  # zeros inside the window were found
