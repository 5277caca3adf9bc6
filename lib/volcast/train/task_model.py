"""The task model: next-day Volume from the two API features only (``/predict``), CatBoost or the task's
RandomForest reference; its formulations, fitting, learning curve, saving and loading; model ids.

Formulation (measured on the 2,758 real tickers, benchmarks/results/model_eval.md): next-day Volume /
vol_moving_avg is right-skewed (median ~0.8, mean ~1), so CatBoost predicts the *ratio*
y / max(vol_moving_avg, 1) with an absolute-error loss (MAE: its conditional median; chosen over quantile
losses on the validation slice) and scales back by vol_moving_avg. The wrapper derives log transforms
and their product (dollar volume) from the two inputs.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .. import config, storage
from ..errors import UserError
from .params import (
    DEFAULT_DEPTH,
    DEFAULT_ITERATIONS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_RATIO_LOSS,
    FORMULATIONS,
    MODELS,
    RF_MIN_SAMPLES_LEAF,
    RF_TREES,
)

DERIVED_INPUTS = ("log1p_vol_moving_avg", "log_adj_close_rolling_med", "log1p_dollar_volume")
MODEL_FILES = {"catboost": "model.cbm", "random_forest": "model.joblib"}
TEST_SAMPLE_FILE = "test_sample.parquet"


def design_matrix(vol_moving_avg, adj_close_rolling_med) -> np.ndarray:
    """The model's inputs, derived from the two API features only.

    Logs put tickers of every size on one scale; their sum (log dollar volume) gives trees the
    product as a single split. Old prices can be zero or negative: clipped before the log.
    """
    vol = np.maximum(np.asarray(vol_moving_avg, dtype=np.float64), 0.0)
    price = np.asarray(adj_close_rolling_med, dtype=np.float64)
    log_price = np.log(np.maximum(price, 1e-4))
    log_vol = np.log1p(vol)
    return np.column_stack([log_vol, log_price, np.log1p(vol * np.maximum(price, 0.0))])


def _scale(vol_moving_avg) -> np.ndarray:
    return np.maximum(np.asarray(vol_moving_avg, dtype=np.float64), 1.0)


def to_model_target(formulation: str, y, vol_moving_avg) -> np.ndarray:
    """What the estimator learns, per formulation."""
    y = np.asarray(y, dtype=np.float64)
    if formulation == "ratio":
        return y / _scale(vol_moving_avg)
    if formulation == "log_ratio":
        return np.log1p(np.maximum(y, 0.0)) - np.log1p(_scale(vol_moving_avg))
    return y


def from_model_output(formulation: str, z, vol_moving_avg) -> np.ndarray:
    """Back to a (non-negative) volume."""
    z = np.asarray(z, dtype=np.float64)
    if formulation == "ratio":
        out = z * _scale(vol_moving_avg)
    elif formulation == "log_ratio":
        out = np.expm1(np.clip(z + np.log1p(_scale(vol_moving_avg)), None, 700.0))
    else:
        out = z
    return np.maximum(out, 0.0)


def resolve_formulation(model: str, formulation: str, loss: str) -> tuple[str, str]:
    """'auto' means: ratio with an MAE loss for CatBoost; raw Volume for the RF reference."""
    if model not in MODELS:
        raise UserError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    if formulation in (None, "auto"):
        formulation = "ratio" if model == "catboost" else "raw"
    if formulation not in FORMULATIONS:
        raise UserError(f"formulation must be 'auto' or one of {', '.join(FORMULATIONS)}; got {formulation!r}")
    if model == "random_forest":
        return formulation, "squared_error"  # sklearn's MAE criterion is far too slow at this size
    if loss in (None, "auto"):
        loss = DEFAULT_RATIO_LOSS if formulation == "ratio" else "RMSE"
    return formulation, str(loss)


@dataclass
class VolumeModel:
    """A trained model: ``predict(vol_moving_avg, adj_close_rolling_med)`` -> float volumes >= 0."""

    model_id: str
    card: dict
    estimator: Any
    kind: str
    formulation: str

    CHUNK = 1 << 21  # rows per estimator call: bounds the temporary design matrix (~50 MB)

    def predict(self, vol_moving_avg, adj_close_rolling_med) -> np.ndarray:
        vol, price = _float_rows(vol_moving_avg, adj_close_rolling_med)
        return self.from_raw(self.raw(vol, price), vol)

    def raw(self, vol_moving_avg, adj_close_rolling_med, ntree_start: int = 0) -> np.ndarray:
        """The estimator's output before ``from_model_output`` (what ``predict`` scales back). ``ntree_start``
        (CatBoost): only the trees from that one on, without the model's bias (``raw_scores``)."""
        vol, price = _float_rows(vol_moving_avg, adj_close_rolling_med)
        out = np.empty(len(vol), dtype=np.float64)
        for lo in range(0, len(vol), self.CHUNK):
            x = design_matrix(vol[lo : lo + self.CHUNK], price[lo : lo + self.CHUNK])
            raw = tree_range(self.estimator, x, ntree_start) if ntree_start else self._raw_predict(x)
            out[lo : lo + len(x)] = raw
        return out

    def from_raw(self, raw, vol_moving_avg) -> np.ndarray:
        """``predict``'s answer from the estimator's output ``raw`` for rows with these ``vol_moving_avg``."""
        return from_model_output(self.formulation, raw, np.asarray(vol_moving_avg, dtype=np.float64))

    SMALL_BATCH = 1024

    def _raw_predict(self, x):
        # For the API's few-row calls CatBoost's thread start-up costs more than the trees: one
        # thread halves p99 under load (benchmarks/load_api.py) and gives the same values.
        if len(x) <= self.SMALL_BATCH and type(self.estimator).__module__.startswith("catboost"):
            return self.estimator.predict(x, thread_count=1)
        return self.estimator.predict(x)


def _float_rows(vol_moving_avg, adj_close_rolling_med) -> tuple[np.ndarray, np.ndarray]:
    """The two inputs as float64 arrays of one length (a scalar is one row, and broadcasts against the other)."""
    vol = np.atleast_1d(np.asarray(vol_moving_avg, dtype=np.float64))
    price = np.atleast_1d(np.asarray(adj_close_rolling_med, dtype=np.float64))
    return tuple(np.broadcast_arrays(vol, price))


def tree_range(estimator, x, ntree_start: int) -> np.ndarray:
    """A CatBoost model's raw output (RawFormulaVal) from its trees ``ntree_start`` onwards: no bias (CatBoost adds
    it only from tree 0), so a continued model's raw output is its parent's plus this (``raw_scores``)."""
    return np.asarray(
        estimator.predict(x, prediction_type="RawFormulaVal", ntree_start=ntree_start, ntree_end=estimator.tree_count_),
        dtype=np.float64,
    )


@dataclass
class FitResult:
    model: VolumeModel
    learning_curve: pd.DataFrame
    params: dict = field(default_factory=dict)
    seconds: float = 0.0


def _catboost(params: dict):
    from catboost import CatBoostRegressor

    return CatBoostRegressor(**params)


def fit_model(
    x_vol,
    x_price,
    y,
    *,
    model: str = "catboost",
    formulation: str = "auto",
    loss: str = "auto",
    iterations: int = DEFAULT_ITERATIONS,
    depth: int = DEFAULT_DEPTH,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    seed: int = 42,
    threads: int = 1,
    valid: tuple | None = None,
    model_id: str = "unsaved",
    init: VolumeModel | None = None,
) -> FitResult:
    """Fit on (vol_moving_avg, adj_close_rolling_med) -> target volume; learning curve on ``valid``.

    ``valid`` = (vol, price, y) of a validation slice (not fitted on); the curve has the loss on
    the fitted rows and on it per iteration (CatBoost) or per number of trees (RandomForest).
    ``init`` (CatBoost only): a trained model to continue (warm start): ``iterations`` more trees are fitted
    on these rows on top of its trees.
    """
    formulation, loss = resolve_formulation(model, formulation, loss)
    x = design_matrix(x_vol, x_price)
    z = to_model_target(formulation, y, x_vol)
    if valid is not None and len(valid[0]):
        xv = design_matrix(valid[0], valid[1])
        zv = to_model_target(formulation, valid[2], valid[0])
    else:
        xv = zv = None
    started = time.perf_counter()
    if model == "catboost":
        params = dict(
            loss_function=loss,
            eval_metric=loss,
            iterations=int(iterations),
            depth=int(depth),
            learning_rate=float(learning_rate),
            random_seed=int(seed),
            thread_count=int(threads),
            verbose=False,
            allow_writing_files=False,
        )
        with tempfile.TemporaryDirectory(prefix="volcast-catboost-") as tmp:
            # train_dir in a temp dir: CatBoost must never leave catboost_info/ in the cwd.
            estimator = _catboost({**params, "train_dir": tmp})
            estimator.fit(
                x,
                z,
                eval_set=(xv, zv) if xv is not None else None,
                use_best_model=False,
                init_model=init.estimator if init is not None else None,
            )
        curve = _catboost_curve(estimator, loss)
    else:
        from sklearn.ensemble import RandomForestRegressor

        params = dict(
            n_estimators=RF_TREES,
            min_samples_leaf=RF_MIN_SAMPLES_LEAF,
            criterion=loss,
            n_jobs=int(threads),
            random_state=int(seed),
        )
        estimator = RandomForestRegressor(**params)
        estimator.fit(x, z)
        curve = _forest_curve(estimator, x, z, xv, zv)
    seconds = time.perf_counter() - started
    wrapped = VolumeModel(model_id=model_id, card={}, estimator=estimator, kind=model, formulation=formulation)
    if model == "catboost":
        params = {k: v for k, v in params.items() if k not in ("verbose", "allow_writing_files")}
    return FitResult(wrapped, curve, {"formulation": formulation, "loss": loss, **params}, seconds)


def _catboost_curve(estimator, loss: str) -> pd.DataFrame:
    evals = estimator.get_evals_result()
    learn = next(iter(evals.get("learn", {}).values()), [])
    valid = next(iter(evals.get("validation", {}).values()), [np.nan] * len(learn))
    return pd.DataFrame(
        {
            "iteration": np.arange(1, len(learn) + 1),
            "train_loss": learn,
            "validation_loss": valid[: len(learn)],
            "metric": loss,
        }
    )


def _forest_curve(forest, x, z, xv, zv, max_rows: int = 50_000) -> pd.DataFrame:
    """MAE of the averaged first k trees, k = 1..n (a forest has no iterations, but has this)."""
    rows = np.random.default_rng(0).permutation(len(x))[:max_rows]
    parts = [(x[rows], z[rows])] + ([(xv[:max_rows], zv[:max_rows])] if xv is not None else [])
    losses = []
    for xs, zs in parts:
        running = np.zeros(len(xs))
        curve = []
        for k, tree in enumerate(forest.estimators_, start=1):
            running += tree.predict(xs)
            curve.append(float(np.mean(np.abs(running / k - zs))))
        losses.append(curve)
    n = len(forest.estimators_)
    return pd.DataFrame(
        {
            "iteration": np.arange(1, n + 1),
            "train_loss": losses[0],
            "validation_loss": losses[1] if len(losses) > 1 else [np.nan] * n,
            "metric": "MAE (trees averaged)",
        }
    )


# ---------------------------------------------------------------------------------------------
# Persistence


def _save_estimator(model: VolumeModel, directory: Path) -> str:
    name = MODEL_FILES[model.kind]
    if model.kind == "catboost":
        model.estimator.save_model(str(directory / name), format="cbm")
    else:
        import joblib

        joblib.dump(model.estimator, directory / name, compress=3)
    return name


def save_model(
    model: VolumeModel,
    final_dir: str | os.PathLike,
    card: dict,
    learning_curve: pd.DataFrame,
    test_sample: pd.DataFrame | None = None,
    extras=None,
) -> Path:
    """Publish ``final_dir`` (model file, card.json, learning_curve.csv, test_sample.parquet) atomically.

    ``extras``: ``{file name: write(path)}`` for more files of the same directory (the forecast model,
    the latest-row table...), written into it before it is published, so they swap in together.
    """
    final_dir = Path(final_dir)
    with storage.publish_dir(final_dir) as staging:
        card = {**card, "model_file": _save_estimator(model, staging)}
        for name, write in (extras or {}).items():
            write(staging / name)
        buf = io.StringIO()
        learning_curve.to_csv(buf, index=False)
        storage.atomic_write_text(staging / "learning_curve.csv", buf.getvalue())
        if test_sample is not None:
            storage.write_parquet(pa.Table.from_pandas(test_sample, preserve_index=False), staging / TEST_SAMPLE_FILE)
        storage.atomic_write_json(staging / "card.json", card)
    model.card = card
    return final_dir


def load_model(model_dir: str | os.PathLike) -> VolumeModel:
    """The model in ``model_dir`` (as written by ``run``), ready to ``predict``."""
    model_dir = Path(model_dir)
    card = storage.read_json(model_dir / "card.json")
    if not isinstance(card, dict):
        raise UserError(f"{model_dir} has no card.json; it is not a volcast model directory")
    kind = card.get("model_kind")
    path = model_dir / card.get("model_file", MODEL_FILES.get(kind, ""))
    if kind == "catboost":
        estimator = _catboost({})
        estimator.load_model(str(path), format="cbm")
    elif kind == "random_forest":
        import joblib

        estimator = joblib.load(path)
    else:
        raise UserError(f"{model_dir}/card.json names an unknown model kind {kind!r}")
    return VolumeModel(
        model_id=str(card["model_id"]),
        card=card,
        estimator=estimator,
        kind=kind,
        formulation=card["formulation"]["name"],
    )


def latest_model_dir(output_dir: str | os.PathLike | None) -> Path | None:
    """``DIR/models/<LATEST>``, or None while no model has been published."""
    layout = config.Layout.at(output_dir)
    try:
        model_id = layout.latest_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not model_id or "/" in model_id or model_id.startswith("."):
        return None
    path = layout.models_dir / model_id
    return path if (path / "card.json").exists() else None


def new_model_id(model: str, after: str | None = None) -> str:
    """Sortable (UTC time first) and unique: ``20261127T053012-catboost-ab12cd``.

    ``after``: an existing id this one must sort after (waits for the next second if needed, so
    two runs within one second still sort in the order they ran).
    """
    while True:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        if after is None or stamp > after[: len(stamp)]:
            return f"{stamp}-{model.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        time.sleep(0.05)


def fingerprint_files(paths) -> str:
    """Content fingerprint of files (name, size, bytes): the same data gives the same value anywhere."""
    return storage.fingerprint_files(paths, content=True)
