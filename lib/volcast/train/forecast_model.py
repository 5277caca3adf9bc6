"""The forecast model: next-day Volume from every forecasting input, with a P10-P90 interval.

One CatBoost model with a ``MultiQuantile`` loss predicts the 10th, 50th and 90th percentiles of
``log1p(next-day Volume)`` minus the ticker's typical day, the median of log1p(Volume) over the last 30 rows
(``log_vol_mean30 + vol_med30_lr``, the inputs named in ``TARGET_BASE``): one scale for every ticker size,
measured from a level one spike does not move; quantiles survive the monotone back-transform, so P50 stays a
median. A model whose inputs lack ``vol_med30_lr`` (or a card from before it) measures from ``log_vol_mean30``
alone. The interval
is then widened or narrowed around P50 by one factor, chosen so that 80 % of the validation slice (later
train dates, not fitted on) falls inside it (split-conformal calibration of the quantiles).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import LOG_VOL_MEAN30
from ..errors import UserError
from .params import (
    DEFAULT_DEPTH,
    DEFAULT_FORECAST_ITERATIONS,
    DEFAULT_FORECAST_LEARNING_RATE,
    FORECAST_SUBSAMPLE,
    QUANTILES,
)

MODEL_FILE = "forecast.cbm"
# The target's log base is the sum of these inputs (those present): the 30-row median of log1p(Volume).
TARGET_BASE = (LOG_VOL_MEAN30, "vol_med30_lr")
NOMINAL_COVERAGE = QUANTILES[-1] - QUANTILES[0]


@dataclass
class ForecastModel:
    """``predict(x)`` -> (low, mid, high) volumes; ``x``: float32 rows, one column per name in ``inputs``."""

    estimator: Any
    inputs: tuple
    quantiles: tuple = QUANTILES
    widen: float = 1.0  # interval half-widths (log scale) are multiplied by this
    target_base: tuple = (LOG_VOL_MEAN30,)  # inputs whose sum is the log level the target is measured from

    CHUNK = 1 << 20  # rows per estimator call: bounds CatBoost's copy of the inputs

    def raw(self, x: np.ndarray, ntree_start: int = 0) -> np.ndarray:
        """Raw model output, (n, 3) log ratios as the trees give them (unsorted). ``ntree_start``: only the trees
        from that one on, without the model's bias (``raw_scores``)."""
        from .task_model import tree_range

        x = np.asarray(x, dtype=np.float32)
        out = np.empty((len(x), len(self.quantiles)), dtype=np.float64)
        single = len(x) <= 1024  # few rows (the API): one thread starts faster than many
        for lo in range(0, len(x), self.CHUNK):
            part = x[lo : lo + self.CHUNK]
            if ntree_start:
                raw = tree_range(self.estimator, part, ntree_start)
            else:
                raw = self.estimator.predict(part, thread_count=1) if single else self.estimator.predict(part)
            out[lo : lo + len(part)] = np.asarray(raw, dtype=np.float64).reshape(len(part), -1)
        return out

    def log_quantiles(self, x: np.ndarray) -> np.ndarray:
        """Raw model output, (n, 3) log ratios, sorted per row (quantile lines must not cross)."""
        out = self.raw(x)
        out.sort(axis=1)
        return out

    def interval(self, q: np.ndarray, widen: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w = self.widen if widen is None else widen
        mid = q[:, 1]
        return mid - w * (mid - q[:, 0]), mid, mid + w * (q[:, 2] - mid)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(P10, P50, P90) next-day volumes (float, >= 0); NaN where ``log_vol_mean30`` is missing."""
        return self.from_raw(x, self.raw(x))

    def from_raw(self, x: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``predict``'s answer from the rows' raw output ``raw`` (``raw(x)``: sorted here, not changed)."""
        x = np.asarray(x, dtype=np.float32)
        base = log_base(x, self.inputs, self.target_base)
        low, mid, high = self.interval(np.sort(raw, axis=1))
        with np.errstate(over="ignore", invalid="ignore"):
            return tuple(np.maximum(np.expm1(np.clip(base + v, None, 700.0)), 0.0) for v in (low, mid, high))

    def card(self) -> dict:
        return {
            "model_file": MODEL_FILE,
            "inputs": list(self.inputs),
            "quantiles": list(self.quantiles),
            "interval_widen": self.widen,
            "target_base": list(self.target_base),
            "model_target": f"log1p(next-day Volume) - ({' + '.join(self.target_base)})",
            "back_transform": f"expm1(prediction + {' + '.join(self.target_base)}), clipped at 0",
        }

    def save(self, path: Path) -> None:
        self.estimator.save_model(str(path), format="cbm")

    @classmethod
    def load(cls, model_dir: Path, card: dict) -> ForecastModel:
        from catboost import CatBoostRegressor

        estimator = CatBoostRegressor()
        estimator.load_model(str(Path(model_dir) / card.get("model_file", MODEL_FILE)), format="cbm")
        return cls(
            estimator,
            tuple(card["inputs"]),
            tuple(card["quantiles"]),
            float(card["interval_widen"]),
            tuple(card.get("target_base") or (LOG_VOL_MEAN30,)),
        )


def target_base_of(inputs) -> tuple:
    """The ``TARGET_BASE`` inputs a model with these inputs measures its target from."""
    return tuple(name for name in TARGET_BASE if name in inputs)


def log_base(x: np.ndarray, inputs, names) -> np.ndarray:
    """Per row, the log level the target is measured from: the sum of the ``names`` columns of ``x``.
    NaN where ``log_vol_mean30`` is (too little history); another missing part counts as 0."""
    inputs = tuple(inputs)
    base = x[:, inputs.index(LOG_VOL_MEAN30)].astype(np.float64)
    for name in names:
        if name != LOG_VOL_MEAN30:
            base = base + np.nan_to_num(x[:, inputs.index(name)].astype(np.float64))
    return base


def log_target(y, base) -> np.ndarray:
    return np.log1p(np.maximum(np.asarray(y, dtype=np.float64), 0.0)) - np.asarray(base, dtype=np.float64)


def calibrate(q: np.ndarray, z: np.ndarray, coverage: float = NOMINAL_COVERAGE) -> float:
    """The factor that puts ``coverage`` of the rows' log targets ``z`` inside the widened interval."""
    mid = q[:, 1]
    below = (mid - z) / np.maximum(mid - q[:, 0], 1e-9)
    above = (z - mid) / np.maximum(q[:, 2] - mid, 1e-9)
    need = np.where(z < mid, below, above)
    need = need[np.isfinite(need)]
    return float(np.quantile(need, coverage)) if len(need) else 1.0


def _validation_outputs(estimator, n: int) -> np.ndarray | None:
    """The fitted model's raw outputs on its validation slice, as ``log_quantiles`` gives them (sorted per row):
    what CatBoost computed for it while fitting (the same values as predicting it again, to float rounding; a
    continued model's include its parent's trees). None when not available."""
    try:
        out = np.asarray(estimator.get_test_eval(), dtype=np.float64)
    except Exception:  # noqa: BLE001 (an older CatBoost, no evaluation set: predict instead)
        return None
    if out.size != len(QUANTILES) * n:
        return None
    out = np.ascontiguousarray(out.reshape(-1, n).T)
    out.sort(axis=1)
    return out


def fit_forecast(
    x,
    y,
    inputs,
    *,
    valid=None,
    iterations: int = DEFAULT_FORECAST_ITERATIONS,
    depth: int = DEFAULT_DEPTH,
    learning_rate: float = DEFAULT_FORECAST_LEARNING_RATE,
    seed: int = 42,
    threads: int = 1,
    init: ForecastModel | None = None,
) -> tuple[ForecastModel, pd.DataFrame, dict]:
    """Fit on float32 inputs ``x`` (columns ``inputs``, which include ``log_vol_mean30``) and next-day
    volumes ``y``; ``valid`` = (x, y) of the validation slice: learning curve and interval calibration.

    Returns ``(model, learning curve, info)``; info has the parameters, seconds and validation coverage
    before and after calibration. ``init``: a trained forecast model to continue (warm start: ``iterations``
    more trees on these rows).
    """
    from catboost import CatBoostRegressor

    inputs = tuple(inputs)
    if LOG_VOL_MEAN30 not in inputs:
        raise UserError(f"the forecast model needs {LOG_VOL_MEAN30!r} among its inputs")
    target_base = init.target_base if init is not None else target_base_of(inputs)
    z = log_target(y, log_base(x, inputs, target_base))
    loss = "MultiQuantile:alpha=" + ",".join(str(q) for q in QUANTILES)
    params = dict(
        loss_function=loss,
        iterations=int(iterations),
        depth=int(depth),
        learning_rate=float(learning_rate),
        random_seed=int(seed),
        thread_count=int(threads),
        bootstrap_type="MVS",
        subsample=FORECAST_SUBSAMPLE,
    )
    eval_set = None
    if valid is not None and len(valid[1]):
        zv = log_target(valid[1], log_base(valid[0], inputs, target_base))
        eval_set = (valid[0], zv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="volcast-catboost-") as tmp:
        estimator = CatBoostRegressor(**params, verbose=False, allow_writing_files=False, train_dir=tmp)
        estimator.fit(
            x, z, eval_set=eval_set, use_best_model=False, init_model=init.estimator if init is not None else None
        )
    seconds = time.perf_counter() - started
    model = ForecastModel(estimator, inputs, target_base=target_base)
    info = {
        "params": params,
        "fit_seconds": round(seconds, 2),
        "validation_coverage_raw": None,
        "validation_coverage": None,
    }
    if eval_set is not None:
        q = _validation_outputs(estimator, len(zv))
        if q is None:
            q = model.log_quantiles(valid[0])
        low, _, high = model.interval(q, 1.0)
        info["validation_coverage_raw"] = float(np.mean((zv >= low) & (zv <= high)))
        model.widen = calibrate(q, zv)
        low, _, high = model.interval(q)
        info["validation_coverage"] = float(np.mean((zv >= low) & (zv <= high)))
    evals = estimator.get_evals_result()
    learn = next(iter(evals.get("learn", {}).values()), [])
    val = next(iter(evals.get("validation", {}).values()), [np.nan] * len(learn))
    curve = pd.DataFrame(
        {
            "iteration": np.arange(1, len(learn) + 1),
            "train_loss": learn,
            "validation_loss": val[: len(learn)],
            "metric": loss,
        }
    )
    return model, curve, info
