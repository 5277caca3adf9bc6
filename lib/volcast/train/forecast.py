"""What the server needs from one model directory, loaded together so model and data swap as one.

API (the contract ``volcast.serve`` calls)::

    from volcast.train.forecast import load_bundle, ForecastError, UnknownSymbol, NotEnoughHistory

    bundle = load_bundle(model_dir)            # -> Bundle; UserError if the directory is not a model
    bundle.model_id: str
    bundle.card: dict                          # card.json
    bundle.input_ranges: dict[str, tuple[float, float]]   # training range of each /predict input
    bundle.predict_task(vma: np.ndarray, med: np.ndarray) -> np.ndarray      # float volumes >= 0
    bundle.extrapolated(vma: np.ndarray, med: np.ndarray) -> np.ndarray      # bool: outside input_ranges
    bundle.forecast(symbols: list[str]) -> list[dict]
        # each {"symbol", "as_of": "YYYY-MM-DD", "volume": int, "interval": {"low": int, "high": int}}
        # raises UnknownSymbol (.status 404) or NotEnoughHistory (.status 422), both ForecastError with
        # .symbol and .message (one line saying why), for the first symbol that cannot be answered
    bundle.forecast_one(symbol: str) -> dict   # the same for one symbol
    bundle.symbols -> list[str]                # every ticker with a forecast
    bundle.self_check() -> None                # predicts a probe input; raises RuntimeError if not finite

Files of ``models/<id>/``: ``card.json``, the task model (``model.cbm`` or ``model.joblib``), the
forecast model (``forecast.cbm``), ``latest.parquet`` (one row per ticker, from the features stage) and
``test_forecasts.parquet``. Every ticker's forecast is computed once at load: a request is a dict look-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import storage
from ..config import DATE, FEATURE_COLUMNS, LOG_VOL_MEAN30, SYMBOL
from ..errors import UserError
from .forecast_model import ForecastModel
from .task_model import VolumeModel, load_model

LATEST_FILE = "latest.parquet"
TEST_FORECASTS_FILE = "test_forecasts.parquet"
MIN_HISTORY_ROWS = 30  # log_vol_mean30 needs 30 rows


class ForecastError(Exception):
    """A symbol that cannot be forecast: ``status`` is the HTTP status to answer with."""

    status = 400

    def __init__(self, symbol: str, message: str):
        super().__init__(message)
        self.symbol = symbol
        self.message = message


class UnknownSymbol(ForecastError):
    status = 404


class NotEnoughHistory(ForecastError):
    status = 422


@dataclass
class Bundle:
    model_id: str
    model_dir: Path
    card: dict
    task: VolumeModel
    forecaster: ForecastModel | None
    latest: pd.DataFrame
    input_ranges: dict = field(default_factory=dict)
    _answers: dict = field(default_factory=dict, repr=False)
    _problems: dict = field(default_factory=dict, repr=False)

    def predict_task(self, vma, med) -> np.ndarray:
        return self.task.predict(vma, med)

    def extrapolated(self, vma, med) -> np.ndarray:
        vma = np.atleast_1d(np.asarray(vma, dtype=np.float64))
        med = np.atleast_1d(np.asarray(med, dtype=np.float64))
        out = np.zeros(np.broadcast(vma, med).shape, dtype=bool)
        for name, values in zip(FEATURE_COLUMNS, (vma, med)):
            if name in self.input_ranges:
                lo, hi = self.input_ranges[name]
                out |= (values < lo) | (values > hi)
        return out

    @property
    def symbols(self) -> list[str]:
        return sorted(self._answers)

    def forecast_one(self, symbol: str) -> dict:
        answer = self._answers.get(symbol)
        if answer is not None:
            return dict(answer, interval=dict(answer["interval"]))
        problem = self._problems.get(symbol)
        if problem is not None:
            raise NotEnoughHistory(symbol, problem)
        if self.forecaster is None:
            raise NotEnoughHistory(symbol, f"model {self.model_id} has no forecast model; re-run the train stage")
        raise UnknownSymbol(symbol, f"unknown symbol {symbol!r}: not in the data of model {self.model_id}")

    def forecast(self, symbols) -> list[dict]:
        return [self.forecast_one(str(s)) for s in symbols]

    def self_check(self) -> None:
        """Predict a probe (task model: a mid-range input; forecast model: the first ticker's latest row)
        and raise RuntimeError unless every number is finite."""
        lo_v, hi_v = self.input_ranges.get(FEATURE_COLUMNS[0], (1e5, 1e5))
        lo_p, hi_p = self.input_ranges.get(FEATURE_COLUMNS[1], (10.0, 10.0))
        probe = self.predict_task(
            np.array([math.sqrt(max(lo_v, 1) * max(hi_v, 1))]), np.array([math.sqrt(max(lo_p, 1e-2) * max(hi_p, 1e-2))])
        )
        if not np.all(np.isfinite(probe)):
            raise RuntimeError(f"model {self.model_id}: the task model predicts {probe.tolist()} for a probe input")
        if self.forecaster is not None and len(self.latest):
            x = self.latest[list(self.forecaster.inputs)].to_numpy(np.float32)[:1]
            low, mid, high = self.forecaster.predict(x)
            values = [low[0], mid[0], high[0]]
            if np.isfinite(x[0, self.forecaster.inputs.index(LOG_VOL_MEAN30)]) and not np.all(np.isfinite(values)):
                raise RuntimeError(f"model {self.model_id}: the forecast model predicts {values} for a probe row")


def _ranges(card: dict) -> dict:
    return {
        k: (float(v[0]), float(v[1]))
        for k, v in (card.get("input_ranges") or {}).items()
        if v and v[0] is not None and v[1] is not None
    }


def _precompute(model_id: str, forecaster: ForecastModel | None, latest: pd.DataFrame) -> tuple[dict, dict]:
    answers: dict[str, dict] = {}
    problems: dict[str, str] = {}
    if forecaster is None or not len(latest):
        return answers, problems
    x = latest[list(forecaster.inputs)].to_numpy(np.float32)
    ok = np.isfinite(x[:, forecaster.inputs.index(LOG_VOL_MEAN30)])
    low, mid, high = forecaster.predict(x)
    rows = latest["rows"].to_numpy() if "rows" in latest.columns else np.full(len(latest), -1)
    for i, (symbol, day) in enumerate(zip(latest[SYMBOL].tolist(), latest[DATE].astype(str).tolist())):
        if not ok[i]:
            problems[symbol] = (
                f"{symbol} has {int(rows[i])} rows of history up to {day}; a forecast needs the "
                f"last {MIN_HISTORY_ROWS} trading days"
            )
            continue
        answers[symbol] = {
            "symbol": symbol,
            "as_of": day,
            "volume": int(round(mid[i])),
            "interval": {"low": int(math.floor(low[i])), "high": int(math.ceil(high[i]))},
        }
    return answers, problems


def load_bundle(model_dir) -> Bundle:
    """Everything in ``model_dir`` the server needs (see the module docstring)."""
    model_dir = Path(model_dir)
    task = load_model(model_dir)  # UserError when it is not a model directory
    card = task.card
    fcard = (card.get("models") or {}).get("forecast")
    forecaster = ForecastModel.load(model_dir, fcard) if fcard and (model_dir / fcard["model_file"]).exists() else None
    latest_path = model_dir / LATEST_FILE
    latest = pd.read_parquet(latest_path) if latest_path.exists() else pd.DataFrame(columns=[SYMBOL, DATE])
    answers, problems = _precompute(task.model_id, forecaster, latest)
    return Bundle(task.model_id, model_dir, card, task, forecaster, latest, _ranges(card), answers, problems)


def load_test_forecasts(model_dir, symbol: str | None = None) -> pd.DataFrame:
    """Out-of-sample forecasts of the last test dates (Symbol, Date, actual next-day Volume, p10, p50, p90)."""
    path = Path(model_dir) / TEST_FORECASTS_FILE
    if not path.exists():
        raise UserError(f"{path} is missing; re-run the train stage")
    filters = [(SYMBOL, "==", symbol)] if symbol is not None else None
    return pd.read_parquet(path, filters=filters)


def busiest_symbol(model_dir) -> str | None:
    """The ticker with the most rows in ``test_forecasts.parquet`` (the first in Symbol order among equals), read
    from its Symbol column alone: what a chart of one ticker's band picks."""
    import pyarrow.parquet as pq

    path = Path(model_dir) / TEST_FORECASTS_FILE
    if not path.exists():
        raise UserError(f"{path} is missing; re-run the train stage")
    rows = storage.dictionary_value_counts(pq.read_table(path, columns=[SYMBOL], read_dictionary=[SYMBOL])[SYMBOL])
    return min(rows, key=lambda name: (-rows[name], name)) if rows else None


__all__ = [
    "LATEST_FILE",
    "TEST_FORECASTS_FILE",
    "Bundle",
    "ForecastError",
    "NotEnoughHistory",
    "UnknownSymbol",
    "busiest_symbol",
    "load_bundle",
    "load_test_forecasts",
    "storage",
]
