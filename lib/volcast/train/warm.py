"""Warm start (``train.warm_start``): continue the current model (``models/LATEST``) on the rows added since
it was trained, instead of fitting from nothing.

"Rows added" are the fit-pool rows (train dates outside the validation slice) dated after the last train
date of the parent model: with a daily update the split moves forward, and the dates that left the test
period join the train period. Both models are CatBoost models continued with ``init_model``: ``WARM_ITERATIONS``
more trees at ``WARM_LEARNING_RATE_FACTOR`` x the learning rate, fitted on those rows plus a seeded replay
sample of ``REPLAY_ROWS`` of the train rows: fitted on a day's few thousand rows alone, the added trees
learnt that day's noise (on the real tickers, 5 days added: +1.4 % test MAE, where the parent itself was
within 0.3 % of a full retrain). The HAR reference keeps the parent's coefficients, and
the interval is recalibrated on the current validation slice.

The report compares the continued models with a full retrain on the same data (``warm_compare``, default
on: it costs a full fit) and says when a full retrain is due: when either continued model's test MAE is more
than 1 % above the full retrain's, after ``MAX_CHAIN`` warm starts in a row, or when the rows added
since the last full retrain exceed ``MAX_ADDED_SHARE`` of the rows that retrain could sample from.

``read_rows`` decides what the stage reads: with ``warm_compare`` off, a warm start reads only the features
written since its parent's run and takes the rest from the parent's row store (``volcast.train.row_store``).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import storage
from . import row_store as RS
from .forecast_model import ForecastModel
from .rows import RowSettings, TrainRows, load_rows
from .task_model import VolumeModel, latest_model_dir, load_model

WARM_ITERATIONS = 30
REPLAY_ROWS = 100_000
WARM_LEARNING_RATE_FACTOR = 0.3
MAX_CHAIN = 20
MAX_ADDED_SHARE = 0.05
MAE_TOLERANCE = 1.01  # issue 16: a continued model may be at most 1 % worse than a full retrain


@dataclass
class Parent:
    model_dir: Path | None
    card: dict | None
    models: object  # (task model, forecast model), a Future of them (loading in a thread), or None
    reason: str  # why it cannot be continued ("" = it can)

    def _loaded(self) -> tuple:
        if isinstance(self.models, Future):
            self.models = self.models.result()
        return self.models or (None, None)

    def wait(self) -> None:
        """Until its models are loaded (an error loading them is raised here)."""
        self._loaded()

    @property
    def task(self) -> VolumeModel | None:
        return self._loaded()[0]

    @property
    def forecaster(self) -> ForecastModel | None:
        return self._loaded()[1]

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def train_end(self) -> int | None:
        """The parent's last train date (days since 1970-01-01)."""
        if self.card is None:
            return None
        end = (self.card.get("dates") or {}).get("train", [None, None])[1]
        return int((np.datetime64(end) - np.datetime64("1970-01-01")).astype(int)) if end else None

    @property
    def chain(self) -> int:
        return int(((self.card or {}).get("warm_start") or {}).get("chain", 0))

    @property
    def added_since_full(self) -> int:
        return int(((self.card or {}).get("warm_start") or {}).get("rows_added_since_full_retrain", 0))


def find_parent(output_dir, model: str, target_shift: int, inputs) -> Parent:
    """The model to continue, or a Parent whose ``reason`` says why there is none (then: a full retrain).

    Its card is read here; its two models load in a thread (CatBoost's import with them), beside the stage's
    read of its rows, and are waited for when first used."""
    model_dir = latest_model_dir(output_dir)
    if model_dir is None:
        return Parent(None, None, None, "no model to continue (models/LATEST is missing): trained from scratch")
    card = storage.read_json(model_dir / "card.json")
    if not isinstance(card, dict):
        load_model(model_dir)  # raises the error a user sees for a directory that is not a model
    fcard = (card.get("models") or {}).get("forecast") or {}
    problems = []
    if model != "catboost" or card.get("model_kind") != "catboost":
        problems.append("only CatBoost models can be continued")
    if (card.get("target") or {}).get("shift") != target_shift:
        problems.append(f"the parent's target_shift is {(card.get('target') or {}).get('shift')}")
    if list(fcard.get("inputs") or []) != list(inputs):
        problems.append("the parent's forecast inputs differ from this code's")
    if not (card.get("dates") or {}).get("train", [None, None])[1]:
        problems.append("the parent's card has no train dates")
    if problems:
        return Parent(
            model_dir,
            card,
            None,
            f"{model_dir.name} cannot be continued ({'; '.join(problems)}): trained from scratch",
        )
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volcast-parent")
    models = pool.submit(lambda: (load_model(model_dir), ForecastModel.load(model_dir, fcard)))
    pool.shutdown(wait=False)  # its one job still runs to the end
    return Parent(model_dir, card, models, "")


def card_entry(parent: Parent, rows_added: int, added_dates: list, fit_pool: int, maes: dict | None) -> dict:
    """What the card and the report say about a warm start, with the full-retrain rule applied."""
    chain = parent.chain + 1
    since_full = parent.added_since_full + rows_added
    reasons = []
    for name in ("forecast", "task"):
        ratio = (maes or {}).get(f"{name}_ratio")
        if ratio is not None and ratio > MAE_TOLERANCE:
            reasons.append(f"the continued {name} model's MAE is {100 * (ratio - 1):.1f} % above a full retrain's")
    if chain >= MAX_CHAIN:
        reasons.append(f"{chain} warm starts in a row (at most {MAX_CHAIN})")
    if fit_pool and since_full > MAX_ADDED_SHARE * fit_pool:
        reasons.append(
            f"{since_full:,} rows added since the last full retrain, over {100 * MAX_ADDED_SHARE:.0f} % "
            f"of the {fit_pool:,} train rows"
        )
    return {
        "parent_model_id": parent.card["model_id"],
        "rows_added": int(rows_added),
        "added_dates": added_dates,
        "replay_rows": REPLAY_ROWS,
        "chain": chain,
        "rows_added_since_full_retrain": since_full,
        "iterations_added": WARM_ITERATIONS,
        "learning_rate_factor": WARM_LEARNING_RATE_FACTOR,
        "compared_with_full_retrain": maes,
        "full_retrain_due": bool(reasons),
        "note": ("full retrain due: " + "; ".join(reasons) + " (run without train.warm_start)")
        if reasons
        else "continued model within 1 % of a full retrain's MAE; no full retrain due yet",
    }


def read_rows(
    layout, parent: Parent | None, inputs, settings: RowSettings, *, warm_compare: bool, threads: int
) -> tuple[TrainRows, str, dict, dict]:
    """The stage's rows: ``(rows, what was read, file digests known so far, the row parameters)``.

    A warm start (``parent``) without ``warm_compare`` reads only what was written since its parent's run and
    takes the rest from the parent's row store (``volcast.train.row_store``); anything else reads every row."""
    s = settings
    row_params = RS.json_params(**s.load_kwargs(), inputs=list(inputs))
    data, note, digests = None, "every row of the features", {}
    if parent is not None and not warm_compare and s.split == "chronological":
        data, why, digests = RS.load_warm(
            layout.features_dir,
            layout.models_dir,
            parent.card["model_id"],
            inputs,
            row_params,
            shift=s.target_shift,
            test_fraction=s.test_fraction,
            validation_fraction=s.validation_fraction,
            seed=s.seed,
            added_after_day=parent.train_end,
        )
        note = why if data is not None else f"every row of the features ({why})"
    if data is None:
        data = load_rows(
            layout.features_dir,
            inputs,
            **s.load_kwargs(),
            threads=threads,
            added_after_day=parent.train_end if parent is not None else None,
        )
    return data, note, digests, row_params
