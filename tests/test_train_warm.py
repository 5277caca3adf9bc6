"""Warm start (issue 16): a model continued on the rows added since it was trained, on a small generated
market that grows day by day (benchmarks/make_daily_source.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from volcast import config, features, ingest, train
from volcast.pipeline import notebook_parameters

REPO_ROOT = Path(__file__).resolve().parents[1]
HOLD_BACK = 15
SMALL = dict(iterations=20, forecast_iterations=20, max_train_rows=20_000, jobs=1, progress=False)


def _daily_source_module():
    path = REPO_ROOT / "benchmarks" / "make_daily_source.py"
    spec = importlib.util.spec_from_file_location("make_daily_source", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """Train on the market minus its last HOLD_BACK days, release them, re-run ingest + features, warm-start."""
    mds = _daily_source_module()
    root = tmp_path_factory.mktemp("warm")
    tree = ingest.generate_demo_market(root / "full", n_tickers=12, years=2, seed=7)
    src, out = root / "src", root / "out"
    mds.init(str(tree), src, HOLD_BACK)
    ingest.run(out, source=str(src))
    features.run(out)
    parent = train.run(out, **SMALL)
    assert mds.main(["release", str(src), "all"]) == 0
    ingest.run(out, source=str(src))
    features.run(out)
    warm = train.run(out, warm_start=True, **SMALL)
    return out, parent, warm


def test_card_records_the_parent_and_the_rows_added(grown):
    out, parent, warm = grown
    model_dir = train.latest_model_dir(out)
    assert model_dir.name == warm["model_id"] != parent["model_id"]
    card = json.loads((model_dir / "card.json").read_text())
    entry = card["warm_start"]
    assert entry == warm["warm_start"]
    assert entry["parent_model_id"] == parent["model_id"] and entry["chain"] == 1
    assert card["parameters"]["warm_start"] is True
    # Rows added, counted independently: usable rows (features and a next-day Volume) dated after the parent's
    # last train date and before the new validation slice.
    parent_card = json.loads((config.Layout.at(out).models_dir / parent["model_id"] / "card.json").read_text())
    df = pd.read_parquet(config.Layout.at(out).features_dir).sort_values(["Symbol", "Date"])
    df["y"] = df.groupby("Symbol")["Volume"].shift(-1)
    usable = df.dropna(subset=[config.VOL_FEATURE, config.PRICE_FEATURE, config.LOG_VOL_MEAN30, "y"])
    after = usable[
        (usable["Date"] > parent_card["dates"]["train"][1]) & (usable["Date"] < warm["split"]["validation_start"])
    ]
    assert entry["rows_added"] == len(after) > 0
    assert entry["added_dates"] == [after["Date"].min(), after["Date"].max()]


def test_report_compares_with_a_full_retrain_and_serves_the_continued_model(grown):
    out, _, warm = grown
    entry = warm["warm_start"]
    cmp = entry["compared_with_full_retrain"]
    assert cmp["forecast_ratio"] == pytest.approx(cmp["forecast_mae_warm"] / cmp["forecast_mae_full"])
    assert cmp["task_ratio"] == pytest.approx(cmp["task_mae_warm"] / cmp["task_mae_full"])
    over = cmp["forecast_ratio"] > 1.01 or cmp["task_ratio"] > 1.01
    assert entry["full_retrain_due"] == entry["note"].startswith("full retrain due")
    assert not over or entry["full_retrain_due"]
    # The published model is the continued one: its test MAE is the report's forecast MAE and the warm MAE.
    assert warm["metrics"]["forecast"]["mae"] == pytest.approx(cmp["forecast_mae_warm"], rel=1e-12)
    bundle = train.load_bundle(train.latest_model_dir(out))
    bundle.self_check()
    assert bundle.model_id == warm["model_id"]
    assert bundle.forecaster.estimator.tree_count_ == 20 + train.warm.WARM_ITERATIONS  # parent trees + added
    symbol = bundle.symbols[0]
    answer = bundle.forecast_one(symbol)
    assert (
        answer["as_of"]
        == pd.read_parquet(config.Layout.at(out).features_dir, columns=["Symbol", "Date"])
        .query("Symbol == @symbol")["Date"]
        .max()
    )
    assert 0 <= answer["interval"]["low"] <= answer["volume"] <= answer["interval"]["high"]


def test_warm_start_without_a_model_trains_from_scratch(grown, tmp_path):
    out, _, _ = grown
    import os

    fresh = config.Layout.at(tmp_path / "fresh")
    fresh.data_dir.mkdir(parents=True)
    os.symlink(config.Layout.at(out).features_dir.resolve(), fresh.features_dir)
    report = train.run(fresh.output_dir, warm_start=True, **SMALL)
    assert report["warm_start"]["requested"] is True and "trained from scratch" in report["warm_start"]["note"]
    assert train.load_bundle(train.latest_model_dir(fresh.output_dir)).forecaster.estimator.tree_count_ == 20


def test_notebook_declares_warm_start_off_by_default():
    assert notebook_parameters("train")["warm_start"] is False
    assert train.params.DEFAULT_WARM_START is False


def test_a_warm_start_with_no_new_rows_keeps_the_parent_trees(grown, tmp_path):
    out, _, warm = grown
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy, symlinks=True)
    again = train.run(copy, warm_start=True, **SMALL)
    entry = again["warm_start"]
    assert entry["parent_model_id"] == warm["model_id"] and entry["rows_added"] == 0 and entry["chain"] == 2
    bundle = train.load_bundle(train.latest_model_dir(copy))
    parent = train.load_bundle(config.Layout.at(copy).models_dir / warm["model_id"])
    assert bundle.forecaster.estimator.tree_count_ == parent.forecaster.estimator.tree_count_
    symbol = bundle.symbols[0]
    assert bundle.forecast_one(symbol)["volume"] == parent.forecast_one(symbol)["volume"]
