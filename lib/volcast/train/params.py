"""Training parameters: defaults (chosen by measurement, benchmarks/results/model_eval.md) and their checks."""

from __future__ import annotations

import numpy as np

from .. import config
from ..errors import UserError

STAGE = "train"
TARGET = "target"
FEATURES = config.FEATURE_COLUMNS  # (vol_moving_avg, adj_close_rolling_med): what the API takes

MODELS = ("catboost", "random_forest")
SPLITS = ("chronological", "random")
FORMULATIONS = ("ratio", "log_ratio", "raw")

DEFAULT_MAX_TRAIN_ROWS = 300_000  # the notebook's parameters cell must say the same (tested)
# The task model: 150 trees at 0.2 fit the validation slice as well as 300 at 0.1, at half the CPU.
DEFAULT_ITERATIONS = 150
DEFAULT_DEPTH = 6
DEFAULT_LEARNING_RATE = 0.2
DEFAULT_RATIO_LOSS = "MAE"  # the task model's loss, chosen on the validation slice
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_MAX_TEST_ROWS = 1_000_000  # test rows scored (all up to this many, else a seeded sample)
DEFAULT_WARM_START = False  # train.warm_start: continue models/LATEST on the rows added (volcast.train.warm)
VALIDATION_MAX_ROWS = 200_000  # the learning curve needs a faithful, not a huge, validation sample

# The forecast model (volcast.train.forecast_model): the features stage's inputs plus the market's volume
# ratio, which is cross-ticker and so computed by the train stage (volcast.train.rows).
MARKET_INPUT = "market_vol_lr"
FORECAST_MODEL_INPUTS = (*config.FORECAST_INPUTS, MARKET_INPUT)
QUANTILES = (0.1, 0.5, 0.9)
# 200 trees at 0.15 on half the rows per tree (MVS subsample): the validation MAE of 300 at 0.1 on all rows at
# half the CPU (benchmarks/results/model_eval.md).
DEFAULT_FORECAST_ITERATIONS = 200
DEFAULT_FORECAST_LEARNING_RATE = 0.15
FORECAST_SUBSAMPLE = 0.5

# RandomForest (the task's reference): fully grown trees on 1 M rows exhaust memory, so it trains on at
# most this many sampled rows, with leaves of at least RF_MIN_SAMPLES_LEAF rows.
RF_MAX_ROWS = 200_000
RF_TREES = 100
RF_MIN_SAMPLES_LEAF = 5


def _check_target_shift(target_shift) -> int:
    if isinstance(target_shift, bool) or not isinstance(target_shift, (int, np.integer)) or target_shift < 0:
        raise UserError(
            f"target_shift must be a whole number >= 0 (1 = next trading day, 0 = same day); got {target_shift!r}"
        )
    return int(target_shift)


def _check_fraction(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number between 0 and 1 (e.g. 0.2); got {value!r}") from None
    if not 0.0 < value < 1.0:
        raise UserError(f"{name} must be between 0 and 1, exclusive (e.g. 0.2); got {value!r}")
    return value


def _positive_int(name: str, value, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a whole number >= 1 ({hint}); got {value!r}")
    return int(value)
