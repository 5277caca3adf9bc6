"""What the train stage writes beside the models, and reading it back: each ticker's test forecasts (the
explorer's band), the latest-row table with the stage's own inputs, the test sample, report and card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import config, storage
from ..config import DATE
from .band import BAND_ROW_GROUP  # noqa: F401 (re-exported)
from .band import write as write_band  # noqa: F401 (re-exported)
from .params import MARKET_INPUT, STAGE
from .rows import market_at
from .task_model import TEST_SAMPLE_FILE


def _write_latest(src: Path, path: Path, inputs, market) -> None:
    """The latest-row table of the features dataset, plus the inputs computed here (the market ratio)."""
    if not src.exists():
        return
    if MARKET_INPUT not in inputs:
        shutil.copyfile(src, path)
        return
    table = pq.read_table(src)
    days = _days_of(table[DATE])
    column = pa.array(market_at(market, days), pa.float64())
    if MARKET_INPUT in table.column_names:
        table = table.set_column(table.column_names.index(MARKET_INPUT), MARKET_INPUT, column)
    else:
        table = table.append_column(MARKET_INPUT, column)
    storage.write_parquet(table, path)


def _days_of(dates) -> np.ndarray:
    """Days since 1970-01-01 of a Date column (chunked or not), as int64 (``data._day_numbers``)."""
    from .data import _day_numbers

    return _day_numbers(dates.combine_chunks() if isinstance(dates, pa.ChunkedArray) else dates).astype(np.int64)


def load_test_sample(model_dir) -> pd.DataFrame:
    """The seeded sample of a model's test rows saved by ``run``, with its predictions.

    Columns: Date, Volume (today), vol_moving_avg, adj_close_rolling_med, target, prediction,
    baseline (= vol_moving_avg).
    """
    return pd.read_parquet(Path(model_dir) / TEST_SAMPLE_FILE)


def metrics_table(report: dict, digits: int = 3) -> pd.DataFrame:
    """The report's metrics as a table (rows: model and baselines), rounded for display."""
    table = pd.DataFrame(report["metrics"]).T[["mae", "rmse", "r2", "medape"]].astype(float)
    base = table.loc["baseline_vol_moving_avg"]
    table["mae_vs_vol_moving_avg"] = table["mae"] / base["mae"]
    table["medape_vs_vol_moving_avg"] = table["medape"] / base["medape"]
    table[["mae", "rmse"]] = table[["mae", "rmse"]].round(0)
    return table.round(digits)


def read_report(output_dir) -> dict | None:
    return storage.read_json(config.Layout.at(output_dir).report(STAGE))


def load_learning_curve(model_dir) -> pd.DataFrame:
    return pd.read_csv(Path(model_dir) / "learning_curve.csv")


def load_card(model_dir) -> dict:
    return json.loads((Path(model_dir) / "card.json").read_text(encoding="utf-8"))
