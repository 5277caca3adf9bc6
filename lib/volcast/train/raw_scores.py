"""Scoring only a continued model's new trees (a warm start's test evaluation).

A CatBoost model continued with ``init_model`` keeps its parent's trees first, and its bias: its raw output
(RawFormulaVal) is the parent's plus that of the trees after the parent's (``predict(ntree_start=...)`` leaves the
bias out). Every train run keeps its models' raw test outputs in the row store (the task model's, then the
forecast model's three quantiles as the trees give them, unsorted), by the rows' positions in the store. A warm
start gives the test rows it takes from the store their parent's raw outputs (``TrainRows.parent_raw``), and the
evaluation predicts only the new trees on them: the same predictions as a full predict, to float rounding
(tested). Rows without one (the new rows, or a parent whose market ratio of those dates differs) are predicted
whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .params import MARKET_INPUT
from .rows import market_at, market_ratio

RAW_FILES = ("test_raw.npy", "test_raw_pos.npy", "test_raw_trees.npy")  # raw outputs, store positions (ascending),
# the tree counts (task, forecast) of the models that made them


def continuable(fit_model, forecaster) -> bool:
    """Whether both models' predictions are their raw output (then parent + new trees = the continued model)."""
    for estimator in (fit_model.estimator, forecaster.estimator):
        if not type(estimator).__module__.startswith("catboost"):
            return False
        default = getattr(estimator, "_get_default_prediction_type", None)
        if default is None or default() != "RawFormulaVal":  # Poisson, Tweedie: exp() of it
            return False
    return True


def trees(fit_model, forecaster) -> tuple[int, int]:
    return int(fit_model.estimator.tree_count_), int(forecaster.estimator.tree_count_)


def save(directory: Path, positions: np.ndarray, raw: np.ndarray, tree_counts: tuple[int, int]) -> None:
    """Keep ``raw`` (one row per store position in ``positions``) in a store being written (``directory``)."""
    order = np.argsort(positions, kind="stable")
    arrays = (raw[order], np.asarray(positions, np.int64)[order], np.asarray(tree_counts, np.int64))
    for name, array in zip(RAW_FILES, arrays):
        np.save(Path(directory) / name, array)


def load(home: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
    """``(raw outputs (memory-mapped), their store positions, tree counts)`` kept in a store, or None."""
    if not all(os.path.exists(Path(home) / name) for name in RAW_FILES):
        return None
    from .store_reads import npy_map

    raw, pos, counts = (npy_map(Path(home) / name) for name in RAW_FILES)
    return raw, np.asarray(pos), (int(counts[0]), int(counts[1]))


def for_test_rows(home, positions, test, day, parent_totals, market, inputs):
    """``TrainRows.parent_raw`` of a warm start: the stored raw outputs of its ``test`` rows (the first
    ``len(positions)`` rows are the store's rows at ``positions``, the rest new; ``day``: every row's), with NaN
    rows where there is none, and the tree counts; None when the store has none. A row whose market ratio differs
    from the one the parent scored it with (``parent_totals``: its market Volume per day) gets none."""
    stored = load(home)
    if stored is None:
        return None
    raw_stored, pos, counts = stored
    raw = np.empty((len(test), raw_stored.shape[1]))
    want = positions[test[test < len(positions)]]  # the stored rows come first among the test rows
    at = np.clip(np.searchsorted(pos, want), 0, max(len(pos) - 1, 0))
    found = pos[at] == want if len(pos) else np.zeros(len(want), bool)
    if found.all():
        np.take(raw_stored, at, axis=0, out=raw[: len(want)], mode="clip")
    else:
        raw[: len(want)] = np.nan
        raw[np.flatnonzero(found)] = raw_stored[at[found]]
    raw[len(want) :] = np.nan
    if MARKET_INPUT in inputs:  # compared day by day; rows looked at only when a day differs
        days = np.union1d(market[0], parent_totals[0])
        before, now = market_at(market_ratio(*parent_totals), days), market_at(market, days)
        changed = days[~((before == now) | (np.isnan(before) & np.isnan(now)))]
        if len(changed):
            raw[np.isin(day[test], changed)] = np.nan
    return raw, counts


def predict(model, parent_raw: np.ndarray | None, parent_trees: int, *inputs) -> np.ndarray:
    """``model.raw(*inputs)`` of every row, from the parent's raw output plus the trees after the parent's where the
    row has one (rows of ``parent_raw`` not NaN). ``model``: a ``VolumeModel`` or ``ForecastModel``."""
    if parent_raw is None:
        return model.raw(*inputs)
    known = ~np.isnan(parent_raw[:, 0])
    if known.all():
        rows, out = None, parent_raw.copy()
    else:
        out = np.empty_like(parent_raw)
        rows = np.flatnonzero(known)
        whole = np.flatnonzero(~known)
        out[whole] = model.raw(*(a[whole] for a in inputs)).reshape(len(whole), -1)
        out[rows] = parent_raw[rows]
    if model.estimator.tree_count_ > parent_trees and known.any():
        part = inputs if rows is None else tuple(a[rows] for a in inputs)
        added = model.raw(*part, ntree_start=parent_trees).reshape(len(part[0]), -1)
        if rows is None:
            out += added
        else:
            out[rows] += added
    return out if out.shape[1] > 1 else out[:, 0]
