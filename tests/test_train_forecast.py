"""The forecast model and the serving bundle (``volcast.train.forecast``) on a trained model directory."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pandas as pd
import pytest

from test_train_run import SMALL, _output_with, features_dir  # noqa: F401 (the session fixture)
from volcast import config, train
from volcast.train import scoring
from volcast.train.forecast_model import calibrate


@pytest.fixture(scope="module")
def model_dir(features_dir, tmp_path_factory):  # noqa: F811
    out = _output_with(features_dir, tmp_path_factory.mktemp("forecast-run"))
    report = train.run(out, **SMALL)
    return out, report, train.latest_model_dir(out)


def test_bundle_answers_every_ticker_of_the_latest_table(model_dir):
    out, report, path = model_dir
    bundle = train.load_bundle(path)
    bundle.self_check()
    assert bundle.model_id == report["model_id"]
    latest = pd.read_parquet(path / "latest.parquet")
    # The latest-row table is each ticker's last row of the features dataset.
    feats = pd.read_parquet(config.Layout.at(out).features_dir)
    last = feats.groupby("Symbol").tail(1).set_index("Symbol")
    assert sorted(latest["Symbol"]) == sorted(last.index)
    assert (latest.set_index("Symbol")["Date"] == last.loc[latest["Symbol"], "Date"]).all()
    assert (latest.set_index("Symbol")["rows"] == feats.groupby("Symbol").size()).all()
    enough = latest[latest["rows"] >= 30]
    answers = bundle.forecast(enough["Symbol"].tolist())
    for row, answer in zip(enough.itertuples(index=False), answers):
        assert answer["symbol"] == row.Symbol and answer["as_of"] == row.Date
        assert isinstance(answer["volume"], int)
        assert 0 <= answer["interval"]["low"] <= answer["volume"] <= answer["interval"]["high"]
    # The same numbers as the forecast model on the row's inputs.
    x = enough[list(bundle.forecaster.inputs)].to_numpy(np.float32)
    low, mid, high = bundle.forecaster.predict(x)
    assert [a["volume"] for a in answers] == [int(round(v)) for v in mid]


def test_unknown_symbol_is_404_and_short_history_is_422(model_dir, tmp_path):
    _, _, path = model_dir
    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    latest = pd.read_parquet(copy / "latest.parquet")
    short = latest["Symbol"].iloc[0]
    latest.loc[0, "log_vol_mean30"] = math.nan  # as for a ticker with 12 rows
    latest.loc[0, "rows"] = 12
    latest.to_parquet(copy / "latest.parquet")
    bundle = train.load_bundle(copy)
    with pytest.raises(train.UnknownSymbol) as err:
        bundle.forecast(["NO-SUCH-TICKER"])
    assert err.value.status == 404 and "NO-SUCH-TICKER" in err.value.message
    with pytest.raises(train.NotEnoughHistory) as err:
        bundle.forecast_one(short)
    assert err.value.status == 422 and "12 rows" in err.value.message and "30" in err.value.message
    assert short not in bundle.symbols


def test_predict_task_and_extrapolation_flag(model_dir):
    _, _, path = model_dir
    bundle = train.load_bundle(path)
    model = train.load_model(path)
    vma, med = np.array([1e4, 2e6]), np.array([5.0, 80.0])
    np.testing.assert_array_equal(bundle.predict_task(vma, med), model.predict(vma, med))
    (lo_v, hi_v), (lo_p, hi_p) = bundle.input_ranges["vol_moving_avg"], bundle.input_ranges["adj_close_rolling_med"]
    assert 0 <= lo_v < hi_v and lo_p < hi_p
    inside = bundle.extrapolated([(lo_v + hi_v) / 2], [(lo_p + hi_p) / 2])
    outside = bundle.extrapolated([hi_v * 10, (lo_v + hi_v) / 2], [(lo_p + hi_p) / 2, hi_p * 10])
    assert inside.tolist() == [False] and outside.tolist() == [True, True]


def test_self_check_refuses_a_model_that_predicts_nan(model_dir, monkeypatch):
    _, _, path = model_dir
    bundle = train.load_bundle(path)
    monkeypatch.setattr(bundle.task, "predict", lambda v, p: np.array([np.nan]))
    with pytest.raises(RuntimeError, match="probe"):
        bundle.self_check()


def test_test_forecasts_hold_the_actual_next_day_volume(model_dir):
    out, report, path = model_dir
    got = train.load_test_forecasts(path)
    assert list(got.columns[:2]) == ["Symbol", "Date"]
    assert (got["p10"] <= got["p50"]).all() and (got["p50"] <= got["p90"]).all()
    assert got.groupby("Symbol").size().max() <= train.TEST_FORECAST_DATES
    # actual_next recomputed with pandas: the Volume of the ticker's next row.
    feats = pd.read_parquet(config.Layout.at(out).features_dir, columns=["Symbol", "Date", "Volume"])
    feats["next"] = feats.groupby("Symbol")["Volume"].shift(-1)
    feats["Date"] = pd.to_datetime(feats["Date"])
    merged = got.merge(feats, on=["Symbol", "Date"], suffixes=("", "_f"))
    assert len(merged) == len(got)
    np.testing.assert_array_equal(merged["actual_next"].to_numpy(), merged["next"].to_numpy())
    assert (merged["Date"] >= pd.Timestamp(report["split"]["test_start"])).all()


def test_report_has_every_reference_and_the_coverage(model_dir):
    _, report, _ = model_dir
    assert 0.0 <= report["coverage_p10_p90"] <= 1.0
    assert {r["year"] for r in report["by_year"]} and len(report["by_decile"]) == 10
    for row in report["by_year"]:
        assert {"mae_forecast", "mae_har", "mae_baseline_today_volume", "coverage_p10_p90"} <= set(row)


def test_calibration_puts_the_asked_share_inside():
    rng = np.random.default_rng(0)
    z = rng.normal(size=10_000)
    q = np.column_stack([np.full(len(z), -0.5), np.zeros(len(z)), np.full(len(z), 0.5)])
    w = calibrate(q, z, 0.8)
    assert abs(w * 0.5 - 1.2816) < 0.05  # the normal's 90th percentile
    assert abs(np.mean(np.abs(z) <= w * 0.5) - 0.8) < 1e-3


def test_har_recovers_known_coefficients():
    rng = np.random.default_rng(1)
    a, b, c = rng.normal(10, 1, (3, 5000))
    y = np.expm1(0.5 + 0.4 * a + 0.3 * b + 0.2 * c)
    coef = scoring.fit_har(a, b, c, y)
    np.testing.assert_allclose(coef, [0.5, 0.4, 0.3, 0.2], atol=1e-8)
    np.testing.assert_allclose(scoring.predict_har(coef, a, b, c, fallback=0.0), y, rtol=1e-8)


def test_coverage_and_tables_by_group():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert scoring.coverage(y, np.array([0, 0, 4, 4]), np.array([2, 2, 5, 5])) == 0.75
    t = scoring.table_by(np.array([2020, 2020, 2021, 2021]), y, {"p": np.array([1.0, 3.0, 3.0, 2.0])}, "year")
    assert t["year"].tolist() == [2020, 2021]
    assert t["mae_p"].tolist() == [0.5, 1.0]  # |0|,|1| and |0|,|2|
    assert t["medape_p"].tolist() == [0.25, 0.25]  # median(0, 1/2); median(0, 2/4)


def test_market_ratio_in_the_served_latest_rows_is_the_market_total_over_its_30_date_mean(model_dir):
    out, _, path = model_dir
    latest = pd.read_parquet(path / "latest.parquet")
    # Recomputed with pandas: the total Volume of every ticker per date, log1p over log1p of its 30-date mean.
    feats = pd.read_parquet(config.Layout.at(out).features_dir, columns=["Date", "Volume"])
    total = feats.groupby("Date")["Volume"].sum().sort_index().astype(float)
    ratio = np.log1p(total) - np.log1p(total.rolling(30).mean())
    np.testing.assert_allclose(
        latest["market_vol_lr"].to_numpy(), ratio.loc[latest["Date"]].to_numpy(), rtol=1e-9, equal_nan=True
    )
    assert "market_vol_lr" in train.load_bundle(path).forecaster.inputs


def test_test_metrics_on_a_seeded_sample_above_max_test_rows(features_dir, tmp_path):  # noqa: F811
    out = _output_with(features_dir, tmp_path)
    first = train.run(out, **{**SMALL, "max_test_rows": 1000})
    second = train.run(out, **{**SMALL, "max_test_rows": 1000})
    assert first["test_scored_rows"] == 1000 < first["test_rows"]
    assert "sample of 1,000" in first["test_scoring"]
    assert sum(r["rows"] for r in first["by_year"]) == 1000 and sum(r["rows"] for r in first["by_decile"]) == 1000
    assert first["metrics"] == second["metrics"]  # seeded: the same rows every run
    card = train.load_card(train.latest_model_dir(out))
    assert card["rows"]["test_scored"] == 1000 and card["test_scoring"] == first["test_scoring"]


def test_forecast_is_measured_from_the_30_day_median_of_log_volume(model_dir):
    """The P50 the API serves = expm1(the model's raw P50 + log1p of the ticker's 30-row median Volume), the
    median recomputed here with pandas from the features' Volume column."""
    out, _, path = model_dir
    bundle = train.load_bundle(path)
    fc = bundle.forecaster
    assert fc.target_base == ("log_vol_mean30", "vol_med30_lr")
    assert train.load_card(path)["models"]["forecast"]["target_base"] == ["log_vol_mean30", "vol_med30_lr"]
    latest = pd.read_parquet(path / "latest.parquet")
    latest = latest[latest["rows"] >= 30].reset_index(drop=True)
    feats = pd.read_parquet(config.Layout.at(out).features_dir, columns=["Symbol", "Volume"])
    med = np.log1p(feats["Volume"].astype(float)).groupby(feats["Symbol"]).apply(lambda v: np.median(v.iloc[-30:]))
    x = latest[list(fc.inputs)].to_numpy(np.float32)
    raw = np.sort(np.asarray(fc.estimator.predict(x), dtype=np.float64).reshape(len(x), -1), axis=1)[:, 1]
    base = med.loc[latest["Symbol"]].to_numpy()
    # The inputs are stored as float32 log ratios: agreement to float32 precision of a log, not bit for bit.
    np.testing.assert_allclose(fc.predict(x)[1], np.expm1(raw + base), rtol=1e-5)


def test_a_card_without_target_base_measures_from_the_30_day_mean(model_dir, tmp_path):
    """Model directories written before ``target_base`` existed keep their meaning: log_vol_mean30 alone."""
    import json

    _, _, path = model_dir
    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    card = json.loads((copy / "card.json").read_text())
    del card["models"]["forecast"]["target_base"]
    (copy / "card.json").write_text(json.dumps(card))
    fc = train.load_bundle(copy).forecaster
    assert fc.target_base == ("log_vol_mean30",)
    latest = pd.read_parquet(copy / "latest.parquet")
    x = latest[latest["rows"] >= 30][list(fc.inputs)].to_numpy(np.float32)
    raw = np.sort(np.asarray(fc.estimator.predict(x), dtype=np.float64).reshape(len(x), -1), axis=1)[:, 1]
    np.testing.assert_allclose(fc.predict(x)[1], np.expm1(raw + x[:, fc.inputs.index("log_vol_mean30")]), rtol=1e-6)


def test_one_tickers_band_is_read_by_its_row_groups_and_the_busiest_ticker_from_symbols_alone(tmp_path, monkeypatch):
    """The band is written in row groups of BAND_ROW_GROUP rows: reading one ticker gives exactly its rows (what
    filtering the whole table gives), and ``busiest_symbol`` is the ticker with the most rows, the first in Symbol
    order among equals (here BBB and CCC both have 5: BBB)."""
    import pyarrow.parquet as pq

    from volcast.train import band as BAND

    monkeypatch.setattr(BAND, "BAND_ROW_GROUP", 4)
    counts = {"AAA": 3, "BBB": 5, "CCC": 5, "DDD": 1}
    symbols = [s for s, n in counts.items() for _ in range(n)]
    days = [d for n in counts.values() for d in range(n)]
    band = pd.DataFrame(
        {
            "Symbol": symbols,
            "Date": pd.Timestamp("2020-01-01") + pd.to_timedelta(days, unit="D"),
            "p50": np.arange(len(symbols), dtype=float),
        }
    )
    path = tmp_path / train.forecast.TEST_FORECASTS_FILE
    BAND.write(band, path)
    assert pq.ParquetFile(path).num_row_groups == 4  # 14 rows in groups of 4
    assert train.busiest_symbol(tmp_path) == "BBB"
    for symbol in counts:
        got = train.load_test_forecasts(tmp_path, symbol)
        want = band[band["Symbol"] == symbol].reset_index(drop=True)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)


def test_the_interval_is_calibrated_on_what_the_fitted_model_predicts_for_the_validation_slice():
    """``fit_forecast`` takes the validation slice's outputs from the fit (CatBoost's own evaluation of it): the
    widening factor and the coverage are what predicting the slice again with the fitted model gives, for a model
    fitted from scratch and for one continued from it."""
    from volcast.config import LOG_VOL_MEAN30
    from volcast.train import forecast_model as FM

    rng = np.random.default_rng(5)
    inputs = (LOG_VOL_MEAN30, "a", "b")
    x = np.column_stack([rng.normal(10, 1, 6000), rng.normal(size=6000), rng.normal(size=6000)]).astype(np.float32)
    y = np.expm1(x[:, 0] + 0.3 * x[:, 1] + rng.normal(0, 0.5, 6000))
    fit, valid = slice(0, 4000), slice(4000, None)
    model, _, info = FM.fit_forecast(x[fit], y[fit], inputs, valid=(x[valid], y[valid]), iterations=20, threads=1)
    more, _, more_info = FM.fit_forecast(
        x[:2000], y[:2000], inputs, valid=(x[valid], y[valid]), iterations=5, threads=1, init=model
    )
    for m, i in ((model, info), (more, more_info)):
        z = FM.log_target(y[valid], FM.log_base(x[valid], inputs, m.target_base))
        q = m.log_quantiles(x[valid])
        assert m.widen == pytest.approx(FM.calibrate(q, z), rel=1e-9)
        low, _, high = m.interval(q)
        assert i["validation_coverage"] == pytest.approx(np.mean((z >= low) & (z <= high)), abs=1e-12)
