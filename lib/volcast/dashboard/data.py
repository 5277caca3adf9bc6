"""What the dashboard reads: tickers and their rows from the features dataset, and from the current
model's directory its forecasts (through ``volcast.train.forecast``, the API's own calls), out-of-sample
test forecasts, interval coverage and learning curves. No widgets here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from volcast import storage
from volcast.config import (
    DATE,
    PRICE_FEATURE,
    SECURITY_NAME,
    SYMBOL,
    VOL_FEATURE,
    Layout,
)

EXPLORER_COLUMNS = [DATE, "Adj Close", "Volume", VOL_FEATURE, PRICE_FEATURE]


def symbol_rows(output_dir) -> dict[str, int]:
    """Rows per ticker in DIR/data/features ({} when there is no features dataset yet)."""
    import pyarrow.parquet as pq

    path = storage.current_version(Layout.at(output_dir).features_dir)
    if path is None or not any(path.glob("*.parquet")):
        return {}
    # Symbol read as dictionary indices and counted: no Python string per row.
    return storage.dictionary_value_counts(pq.read_table(path, columns=[SYMBOL], read_dictionary=[SYMBOL])[SYMBOL])


def list_symbols(output_dir) -> list[str]:
    """Tickers in DIR/data/features (sorted), or [] when there are none yet."""
    return sorted(symbol_rows(output_dir))


def default_symbol(rows: dict[str, int]) -> str | None:
    """The ticker with the most rows (alphabetically first on a tie): never just the first in sort order,
    which a name like "<..." would win."""
    return min(rows, key=lambda s: (-rows[s], s)) if rows else None


def load_symbol(output_dir, symbol: str) -> pd.DataFrame:
    """One ticker's rows (Date as datetime, Adj Close, Volume, both features, Security Name), by Date."""
    from volcast.features import load_features

    frame = load_features(output_dir, symbol, columns=EXPLORER_COLUMNS + [SECURITY_NAME])
    frame[DATE] = pd.to_datetime(frame[DATE])
    return frame.sort_values(DATE).reset_index(drop=True)


def security_name(frame: pd.DataFrame) -> str | None:
    if SECURITY_NAME not in frame or not len(frame):
        return None
    names = frame[SECURITY_NAME].dropna()
    return str(names.iloc[-1]) if len(names) else None


# ---------------------------------------------------------------------------------------------
# The current model's directory


def bundle_of(predictor):
    """The ``volcast.train.forecast.Bundle`` behind the API's current predictor: the model itself when the
    server holds a bundle, else loaded once from its directory (cached on the predictor)."""
    model = getattr(predictor, "model", None)
    if hasattr(model, "forecast_one"):
        return model
    cached = getattr(predictor, "_volcast_dashboard_bundle", None)
    if cached is None and getattr(predictor, "model_dir", None) is not None:
        from volcast.train.forecast import load_bundle

        cached = load_bundle(predictor.model_dir)
        predictor._volcast_dashboard_bundle = cached
    return cached


def forecast_card(card: dict) -> dict:
    return ((card.get("models") or {}).get("forecast")) or {}


def interval_coverage(card: dict) -> float | None:
    """The forecast model's P10-P90 coverage on the test rows (None: the model has no interval)."""
    for value in (forecast_card(card).get("test_coverage_p10_p90"), card.get("coverage_p10_p90")):
        if isinstance(value, (int, float)) and np.isfinite(value):
            return float(value)
    return None


def test_forecasts(model_dir, symbol: str) -> pd.DataFrame:
    """One ticker's out-of-sample test forecasts (Date = the day the inputs describe, its next-day
    actual volume, p10, p50, p90); empty when the model has none."""
    if model_dir is None:
        return pd.DataFrame()
    from volcast.train.forecast import TEST_FORECASTS_FILE, load_test_forecasts

    if not (Path(model_dir) / TEST_FORECASTS_FILE).exists():
        return pd.DataFrame()
    return load_test_forecasts(model_dir, symbol)


def align_forecasts(frame: pd.DataFrame, fc: pd.DataFrame) -> pd.DataFrame:
    """Out-of-sample forecasts placed on the day they forecast (``target_date``: the ticker's next row
    after the inputs' day), for drawing over that day's actual Volume. Columns: Date, p10, p50, p90.
    A forecast of a day not in the data (after the last stored row) is left out."""
    empty = pd.DataFrame({DATE: pd.Series([], dtype="datetime64[ns]"), "p10": [], "p50": [], "p90": []})
    if not len(fc) or "target_date" not in fc or not len(frame):
        return empty
    out = pd.DataFrame(
        {
            DATE: pd.to_datetime(fc["target_date"]).astype(frame[DATE].dtype),
            "p10": fc["p10"].to_numpy(np.float64),
            "p50": fc["p50"].to_numpy(np.float64),
            "p90": fc["p90"].to_numpy(np.float64),
        }
    )
    out = out[out[DATE].isin(frame[DATE])]
    return out.sort_values(DATE).reset_index(drop=True)


def learning_curves(model_dir) -> dict[str, pd.DataFrame]:
    """The model directory's learning curves by predictor name: ``learning_curve.csv`` is the task
    model's ("model"), ``learning_curve_forecast.csv`` the forecast model's ("forecast")."""
    if model_dir is None:
        return {}
    out = {}
    for path in sorted(Path(model_dir).glob("learning_curve*.csv")):
        curve = pd.read_csv(path)
        if "iteration" in curve and len(curve):
            out[path.stem.replace("learning_curve", "").strip("_") or "model"] = curve
    return out


__all__ = [
    "EXPLORER_COLUMNS",
    "align_forecasts",
    "bundle_of",
    "default_symbol",
    "forecast_card",
    "interval_coverage",
    "learning_curves",
    "list_symbols",
    "load_symbol",
    "security_name",
    "symbol_rows",
    "test_forecasts",
]
