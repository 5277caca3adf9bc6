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
    for name in ("learning_curve.csv", "learning_curve_forecast.csv"):  # the parent's trees, the parent's curves
        mine = pd.read_csv(train.latest_model_dir(copy) / name)
        assert len(mine) and mine.equals(pd.read_csv(config.Layout.at(copy).models_dir / warm["model_id"] / name))
    symbol = bundle.symbols[0]
    assert bundle.forecast_one(symbol)["volume"] == parent.forecast_one(symbol)["volume"]


# ---------------------------------------------------------------------------------------------
# The row store: a warm start reads only the delta files written since its parent


def _write_versions(features_dir: Path, root: Path, cuts: list) -> list[Path]:
    """Version k of the features: the rows dated up to cuts[k], as the daily layout writes them: version 0 one
    base file per partition; each later version hard-links the previous one's files and adds one delta file
    per partition with the rows of (cuts[k-1], cuts[k]]."""
    import os

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from volcast import storage

    versions = [root / f"v{k}" for k in range(len(cuts))]
    for k, version in enumerate(versions):
        version.mkdir(parents=True)
        if k:
            for item in versions[k - 1].iterdir():
                os.link(item, version / item.name)
        for path in sorted(features_dir.glob("part-*.parquet")):
            table = pq.read_table(path)
            key = storage.split_partition_name(path.name)[0]
            if k == 0:
                part, name = table.filter(pc.less_equal(table["Date"], cuts[0])), storage.partition_file(key)
            else:
                mask = pc.and_(pc.greater(table["Date"], cuts[k - 1]), pc.less_equal(table["Date"], cuts[k]))
                part, name = table.filter(mask), storage.delta_file(key, k)
            if part.num_rows:
                pq.write_table(part, version / name)
    return versions


def _roles(d, role, inputs) -> pd.DataFrame:
    import numpy as np

    r = getattr(d, role)
    frame = pd.DataFrame(
        {
            "Symbol": np.asarray(d.tickers)[d.ticker[r]],
            "day": d.day[r],
            "next_day": d.next_day[r],
            "volume": d.volume[r],
            "vol": d.vol[r],
            "price": d.price[r],
            "target": d.target[r],
        }
    )
    frame = pd.concat([frame, pd.DataFrame(d.x[r], columns=list(inputs))], axis=1)
    return frame.sort_values(["Symbol", "day"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def daily_versions(tmp_path_factory):
    import numpy as np

    root = tmp_path_factory.mktemp("store")
    tree = ingest.generate_demo_market(root / "src", n_tickers=12, years=3, seed=11)
    full = root / "full"
    ingest.run(full, source=str(tree))
    features.run(full)
    fdir = config.Layout.at(full).features_dir.resolve()
    dates = np.unique(pd.read_parquet(fdir, columns=["Date"])["Date"])
    return _write_versions(fdir, root / "versions", [dates[-8], dates[-5], dates[-1]])


def _point(out: Path, version: Path) -> None:
    link = config.Layout.at(out).features_dir
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    link.symlink_to(version)


def _store_equals_full_read(out: Path, max_test_rows: int):
    """The parent's row store plus the files written since give what a full read of the features gives."""
    import numpy as np

    from volcast.train import row_store
    from volcast.train.rows import load_rows

    inputs = list(train.FORECAST_MODEL_INPUTS)
    layout = config.Layout.at(out)
    params = row_store.json_params(
        target_shift=1,
        split="chronological",
        test_fraction=0.2,
        validation_fraction=0.1,
        max_train_rows=SMALL["max_train_rows"],
        max_test_rows=max_test_rows,
        seed=42,
        inputs=inputs,
    )
    parent = train.warm.find_parent(out, "catboost", 1, inputs)
    fast, note, _ = row_store.load_warm(
        layout.features_dir,
        layout.models_dir,
        parent.card["model_id"],
        inputs,
        params,
        shift=1,
        test_fraction=0.2,
        validation_fraction=0.1,
        seed=42,
        added_after_day=parent.train_end,
    )
    assert fast is not None, note
    full = load_rows(
        layout.features_dir, inputs, max_train_rows=SMALL["max_train_rows"], added_after_day=parent.train_end
    )
    assert fast.counts == full.counts and fast.rows == full.rows and fast.dates == full.dates
    assert fast.split_info == full.split_info and fast.valid_info == full.valid_info
    assert fast.rows["added"] > 0
    np.testing.assert_array_equal(fast.market[0], full.market[0])
    np.testing.assert_allclose(fast.market[1], full.market[1], rtol=1e-12)
    # Every test row is scored here (max_test_rows is large) and the validation pool is small: the same rows.
    for role in ("test", "valid", "added"):
        pd.testing.assert_frame_equal(_roles(fast, role, inputs), _roles(full, role, inputs))
    return full


def _band_as_a_full_read_chooses_it(out: Path, full) -> None:
    """The warm start's band: the rows a full read chooses, in Symbol then Date order; the forecasts of the dates
    its parent's band has are the parent's, the others the continued model's."""
    model_dir = train.latest_model_dir(out)
    bands = train.load_test_forecasts(model_dir)
    want = _roles(full, "band", list(train.FORECAST_MODEL_INPUTS))
    got = bands.assign(day=(bands["Date"] - pd.Timestamp("1970-01-01")).dt.days)
    assert got.equals(got.sort_values(["Symbol", "day"]))
    pd.testing.assert_frame_equal(
        got[["Symbol", "day", "actual_next"]].reset_index(drop=True),
        want[["Symbol", "day", "target"]].rename(columns={"target": "actual_next"}),
        check_dtype=False,
    )
    parent_id = train.load_card(model_dir)["warm_start"]["parent_model_id"]
    parent = train.load_test_forecasts(config.Layout.at(out).models_dir / parent_id)
    both = got.merge(parent, on=["Symbol", "Date"], how="left", suffixes=("", "_parent"), indicator=True)
    old, new = both[both["_merge"] == "both"], both[both["_merge"] == "left_only"]
    assert len(old) and len(new)
    for column in ("p10", "p50", "p90"):
        assert (old[column] == old[f"{column}_parent"]).all()
    forecaster = train.ForecastModel.load(model_dir, train.load_card(model_dir)["models"]["forecast"])
    rows = want.merge(new[["Symbol", "day"]], on=["Symbol", "day"])
    p10, p50, p90 = forecaster.predict(rows[list(train.FORECAST_MODEL_INPUTS)].to_numpy("float32"))
    assert (new["p50"].to_numpy() == p50).all() and (new["p90"].to_numpy() == p90).all()


def test_rows_from_the_store_equal_a_full_read_day_after_day(daily_versions, tmp_path, monkeypatch):
    from volcast.train import band, rows

    for module in (rows, band):  # a band shorter than the test period, so that it moves day by day
        monkeypatch.setattr(module, "TEST_FORECAST_DATES", 40)
    out = tmp_path / "out"
    _point(out, daily_versions[0])
    kw = dict(SMALL, max_test_rows=10**9)
    train.run(out, **kw)
    for version in daily_versions[1:]:
        _point(out, version)
        full = _store_equals_full_read(out, 10**9)
        report = train.run(out, warm_start=True, warm_compare=False, **kw)
        assert report["warm_start"]["rows_read"].startswith("the parent's row store")
        assert report["test_rows"] == full.rows["test"] and report["dropped_rows"] == full.counts
    # The explorer's band: each ticker's last TEST_FORECAST_DATES test rows, as a full read chooses them.
    _band_as_a_full_read_chooses_it(out, full)
    assert report["warm_start"]["chain"] == 2


def test_the_store_follows_the_daily_pipeline_deltas_and_folds(tmp_path, monkeypatch):
    """The real daily layout: ingest + features write each day into the dataset's one delta file (every row since
    each partition's base, the previous delta replaced), and fold partitions into their bases once the delta
    carries more than a share of the rows (here 0.15 %: about one day of these 12 tickers)."""
    import pyarrow.parquet as pq

    from volcast import partitions

    monkeypatch.setattr(partitions, "DELTA_FRACTION", 0.0015)
    mds = _daily_source_module()
    tree = ingest.generate_demo_market(tmp_path / "full", n_tickers=12, years=3, seed=5)
    src, out = tmp_path / "src", tmp_path / "out"
    mds.init(str(tree), src, 4)
    ingest.run(out, source=str(src))
    features.run(out)
    kw = dict(SMALL, max_test_rows=10**9)
    train.run(out, **kw)
    layouts, delta_rows = set(), []
    for _ in range(3):
        assert mds.main(["release", str(src), "next"]) == 0
        ingest.run(out, source=str(src))
        features.run(out)
        names = [p.name for p in config.Layout.at(out).features_dir.resolve().glob("part-*.parquet")]
        layouts.add(any("~" in n for n in names))
        deltas = list(config.Layout.at(out).features_dir.resolve().glob("part-~*.parquet"))
        delta_rows.append(sum(pq.read_metadata(p).num_rows for p in deltas))
        full = _store_equals_full_read(out, 10**9)
        report = train.run(out, warm_start=True, warm_compare=False, **kw)
        assert report["warm_start"]["rows_read"].startswith("the parent's row store"), report["warm_start"]
        assert report["test_rows"] == full.rows["test"] and report["dropped_rows"] == full.counts
    assert True in layouts  # delta files were read
    assert delta_rows[1] > delta_rows[0] and delta_rows[2] < delta_rows[1]  # a day added, then folds
    _band_as_a_full_read_chooses_it(out, full)


def test_a_rewritten_features_file_means_a_full_read(daily_versions, tmp_path):
    import os

    out = tmp_path / "out"
    _point(out, daily_versions[0])
    train.run(out, **SMALL)
    changed = tmp_path / "v1"
    changed.mkdir()
    for item in daily_versions[1].iterdir():
        os.link(item, changed / item.name)
    base = sorted(changed.glob("part-*.parquet"))[0]
    data = base.read_bytes()
    base.unlink()
    base.write_bytes(data)  # same bytes, a new file: as a compaction writes it
    os.utime(base, ns=(1, 1))
    _point(out, changed)
    report = train.run(out, warm_start=True, warm_compare=False, **SMALL)
    assert report["warm_start"]["rows_read"].startswith("every row of the features")
    assert base.name in report["warm_start"]["rows_read"]


def test_a_parent_without_its_test_forecasts_means_a_full_read(daily_versions, tmp_path):
    out = tmp_path / "out"
    _point(out, daily_versions[0])
    train.run(out, **SMALL)
    (train.latest_model_dir(out) / "test_forecasts.parquet").unlink()  # e.g. a copy that lost it
    _point(out, daily_versions[1])
    report = train.run(out, warm_start=True, warm_compare=False, **SMALL)
    assert report["warm_start"]["rows_read"].startswith("every row of the features")
    assert "test_forecasts.parquet" in report["warm_start"]["rows_read"]
    assert len(train.load_test_forecasts(train.latest_model_dir(out))) > 0


def test_a_warm_start_scores_only_its_new_trees_and_gets_a_full_predicts_answers(daily_versions, tmp_path, monkeypatch):
    """A continued model's raw output is its parent's plus its new trees': the evaluation of a warm start from the
    row store predicts only the new trees on the test rows its parent scored, and gets what predicting every tree
    of the reloaded continued models gives. Two warm starts in a row: the parent is itself a continued model."""
    import shutil

    import numpy as np

    from volcast.train import evaluation, task_model
    from volcast.train.task_model import FitResult

    out = tmp_path / "out"
    _point(out, daily_versions[0])
    kw = dict(SMALL, max_test_rows=10**9)
    train.run(out, **kw)
    _point(out, daily_versions[1])
    first = train.run(out, warm_start=True, warm_compare=False, **kw)
    _point(out, daily_versions[2])
    before = tmp_path / "before"  # the first warm start's store: the second one replaces it
    shutil.copytree(out, before, symlinks=True)
    second = train.run(out, warm_start=True, warm_compare=False, **kw)
    assert second["warm_start"]["parent_model_id"] == first["model_id"] and second["warm_start"]["rows_added"] > 0

    inputs = list(train.FORECAST_MODEL_INPUTS)
    layout = config.Layout.at(before)
    parent = train.warm.find_parent(before, "catboost", 1, inputs)
    assert parent.card["model_id"] == first["model_id"]
    settings = train.rows.RowSettings(1, "chronological", 0.2, 0.1, kw["max_train_rows"], kw["max_test_rows"], 42)
    data, note, _, _ = train.warm.read_rows(layout, parent, inputs, settings, warm_compare=False, threads=1)
    assert note.startswith("the parent's row store")
    parent_raw, trees = data.parent_raw
    known = ~np.isnan(parent_raw[:, 0])
    assert known.sum() > 0 and (~known).sum() > 0  # the parent's test rows, and the new day's rows
    assert trees == (parent.task.estimator.tree_count_, parent.forecaster.estimator.tree_count_)

    model_dir = config.Layout.at(out).models_dir / second["model_id"]
    task = train.load_model(model_dir)
    forecaster = train.ForecastModel.load(model_dir, train.load_card(model_dir)["models"]["forecast"])
    assert forecaster.estimator.tree_count_ == trees[1] + train.warm.WARM_ITERATIONS
    partial = []
    tree_range = task_model.tree_range
    monkeypatch.setattr(task_model, "tree_range", lambda e, x, start: partial.append(len(x)) or tree_range(e, x, start))
    har = np.zeros(4)  # the HAR reference is not what is tested here
    test = data.test
    got = evaluation.predict_test(data, test, FitResult(task, None), forecaster, har, inputs, data.parent_raw)
    assert sum(partial) == 2 * int(known.sum())  # only the new trees, on the rows with a parent's output
    p10, p50, p90 = forecaster.predict(data.x[test])
    for name, want in (("model", task.predict(data.vol[test], data.price[test])), ("forecast", p50)):
        np.testing.assert_allclose(got[name], want, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got["p10"], p10, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(got["p90"], p90, rtol=1e-12, atol=1e-9)
