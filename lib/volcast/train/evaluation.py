"""The train stage's test evaluation: every predictor scored on the same test rows, the tables by year and
volume decile, the interval's coverage, the explorer's band of test forecasts and the chart sample.

Rows are predicted ``PREDICT_CHUNK`` at a time from the stage's rows (``rows.TrainRows``): no full copy of the
test rows' inputs is made, and what stays per test row is what the metrics need (the actual value, each
predictor's prediction and the interval, float64: the same numbers as predicting all rows at once, since every
predictor is row by row). The test rows are at most ``max_test_rows``, so this part is bounded by that setting.
A warm start predicts only its new trees on the test rows its parent scored (``raw_scores``), and extends its
parent's band (``band``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from ..config import DATE, LOG_VOL_MEAN30, VOLUME
from . import raw_scores as RAW
from . import scoring as M
from .data import _sample
from .params import FEATURES, TARGET

TEST_SAMPLE_ROWS = 5000  # enough points for a predicted-vs-actual chart
PREDICTORS = ("model", "forecast", "har", "baseline_vol_moving_avg", "baseline_today_volume")
PREDICT_CHUNK = 1 << 18  # rows whose inputs are copied out for one prediction call


def _har_inputs(x: np.ndarray, names: list) -> tuple:
    base = x[:, names.index(LOG_VOL_MEAN30)].astype(np.float64)
    return tuple(base + x[:, names.index(n)].astype(np.float64) for n in ("vol_lr_0", "vol_mean5_lr", "vol_mean22_lr"))


def forecast_rows(forecaster, x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``forecaster.predict(x[rows])`` (P10, P50, P90), a chunk of rows at a time."""
    out = tuple(np.empty(len(rows)) for _ in range(3))
    for lo in range(0, len(rows), PREDICT_CHUNK):
        part = forecaster.predict(x[rows[lo : lo + PREDICT_CHUNK]])
        for whole, chunk in zip(out, part):
            whole[lo : lo + len(chunk)] = chunk
    return out


def predict_test(data, rows, fit, forecaster, har_coef, inputs, parent_raw=None) -> dict:
    """Every predictor's predictions of ``rows`` (and the interval: ``p10``, ``p90``), chunk by chunk, and both
    models' raw outputs (``raw``, or None: see ``raw_scores``). ``parent_raw``: ``(raw, tree counts)`` of the
    parent's models for these rows (a warm start): only the trees after the parent's are predicted on them."""
    n = len(rows)
    preds = {name: np.empty(n) for name in ("model", "forecast", "har", "p10", "p90")}
    keep_raw = RAW.continuable(fit.model, forecaster)
    if parent_raw is not None and (not keep_raw or np.less(RAW.trees(fit.model, forecaster), parent_raw[1]).any()):
        parent_raw = None  # not this model's parent (cannot happen from a row store; checked all the same)
    # Both models predict through their raw output (``predict`` is ``from_raw(raw(...))``), kept for the next
    # warm start when it can be continued.
    raw = np.empty((n, 1 + len(forecaster.quantiles)))
    trees = parent_raw[1] if parent_raw is not None else (0, 0)
    for lo in range(0, n, PREDICT_CHUNK):
        r = rows[lo : lo + PREDICT_CHUNK]
        hi = lo + len(r)
        x = data.x[r]
        old = parent_raw[0][lo:hi, 1:] if parent_raw is not None else None
        raw[lo:hi, 1:] = RAW.predict(forecaster, old, trees[1], x)
        preds["p10"][lo:hi], preds["forecast"][lo:hi], preds["p90"][lo:hi] = forecaster.from_raw(x, raw[lo:hi, 1:])
        preds["har"][lo:hi] = M.predict_har(har_coef, *_har_inputs(x, inputs), fallback=data.vol[r])
        del x
    vol, price = data.vol[rows], data.price[rows]
    old = parent_raw[0][:, :1] if parent_raw is not None else None
    raw[:, 0] = RAW.predict(fit.model, old, trees[0], vol, price)
    preds["model"][:] = fit.model.from_raw(raw[:, 0], vol)
    preds.update(M.baseline_predictions(data.volume[rows], vol))
    preds["raw"] = raw if keep_raw else None
    return preds


class Evaluation(NamedTuple):
    """The test evaluation: what the card, the report and the model directory are built from."""

    all_metrics: dict
    ratios_all: dict
    test_coverage: object
    by_year: pd.DataFrame
    by_decile: pd.DataFrame
    deciles: pd.DataFrame
    test_forecasts: pd.DataFrame | pa.Table
    test_sample: pd.DataFrame
    test_raw: np.ndarray | None = None  # both models' raw outputs of the test rows (``raw_scores``)
    band: dict | None = None  # the band's arrays, for the row store (``band``)


def evaluate(data, test_rows, fit, forecaster, har_coef, inputs, seed, threads=1, parent_raw=None) -> Evaluation:
    """Score every predictor on the test rows; the tables, the test forecasts and the chart sample.

    The tables are independent of one another and numpy releases the GIL in them: they run side by side on
    ``threads`` threads (the same numbers)."""
    from . import band as BAND

    y = data.target[test_rows]
    vol_test = data.vol[test_rows]
    preds = predict_test(data, test_rows, fit, forecaster, har_coef, inputs, parent_raw)
    p10, p50, p90, raw = preds.pop("p10"), preds["forecast"], preds.pop("p90"), preds.pop("raw")
    years = (np.datetime64("1970-01-01") + data.day[test_rows].astype("timedelta64[D]")).astype("datetime64[Y]")
    years = years.astype(int) + 1970
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        jobs = {name: pool.submit(M.metrics, y, preds[name]) for name in PREDICTORS}
        jobs["by_year"] = pool.submit(M.table_by, years, y, preds, "year")
        y_order = np.argsort(y, kind="stable")
        jobs["deciles"] = pool.submit(M.error_by_decile, y, preds["model"], vol_test, order=y_order)
        jobs["by_decile"] = pool.submit(M.table_by, M.deciles(y, order=y_order), y, preds, "decile")
        test_forecasts, band = BAND.build(data, forecaster)
        done = {name: job.result() for name, job in jobs.items()}
    all_metrics = {name: done[name] for name in PREDICTORS}
    ratios_all = {name: M.ratios_vs_baseline(all_metrics, name) for name in all_metrics}
    test_coverage = M.coverage(y, p10, p90)
    by_year, by_decile, deciles = done["by_year"], done["by_decile"], done["deciles"]
    cover_year = pd.Series((y >= p10) & (y <= p90)).groupby(years).mean()
    by_year["coverage_p10_p90"] = by_year["year"].map(cover_year)
    sample = _sample(len(test_rows), TEST_SAMPLE_ROWS, np.random.default_rng(seed))
    s_rows = test_rows[sample]
    test_sample = pd.DataFrame(
        {
            DATE: np.datetime64("1970-01-01") + data.day[s_rows].astype("timedelta64[D]"),
            VOLUME: data.volume[s_rows],
            FEATURES[0]: data.vol[s_rows],
            FEATURES[1]: data.price[s_rows],
            TARGET: y[sample],
            "prediction": preds["model"][sample],
            "baseline": vol_test[sample],
            "forecast": p50[sample],
            "forecast_low": p10[sample],
            "forecast_high": p90[sample],
            "har": preds["har"][sample],
        }
    )
    return Evaluation(
        all_metrics, ratios_all, test_coverage, by_year, by_decile, deciles, test_forecasts, test_sample, raw, band
    )
