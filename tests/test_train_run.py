"""Training stage end to end on the real sample (or the demo market when ../shared is absent).

The features come from the ingest and features stages; the checks recompute what the report
claims with plain pandas/numpy from the features files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from volcast import config, train
from volcast.errors import UserError

VOL, PRICE = config.VOL_FEATURE, config.PRICE_FEATURE
SMALL = dict(iterations=20, forecast_iterations=20, max_train_rows=20_000, progress=False)


@pytest.fixture(scope="session")
def features_dir(tmp_path_factory, sample_source) -> Path:
    from volcast import features, ingest

    out = tmp_path_factory.mktemp("train-features")
    ingest.run(out, source=str(sample_source))
    features.run(out)
    return config.Layout.at(out).features_dir.resolve()


def _output_with(features_dir: Path, tmp_path: Path) -> Path:
    """A fresh output dir whose data/features is the shared features dataset (read-only use)."""
    layout = config.Layout.at(tmp_path / "out")
    layout.data_dir.mkdir(parents=True)
    os.symlink(features_dir, layout.features_dir)
    return layout.output_dir


@pytest.fixture(scope="module")
def trained(features_dir, tmp_path_factory):
    out = _output_with(features_dir, tmp_path_factory.mktemp("train-run"))
    report = train.run(out, **SMALL)
    return out, report


def test_run_writes_model_card_curve_latest_and_report(trained):
    out, report = trained
    layout = config.Layout.at(out)
    assert set(report) >= {"model_id", "target", "split", "metrics", "train_rows", "test_rows"}
    assert set(report["metrics"]) == {"model", "forecast", "har", "baseline_vol_moving_avg", "baseline_today_volume"}
    for block in report["metrics"].values():
        assert set(block) == {"mae", "rmse", "r2", "medape"}
    assert report["split"]["kind"] == "chronological"
    assert len(report["split"]["test_start"]) == 10
    assert json.loads(layout.report("train").read_text()) == report

    assert layout.latest_file.read_text().strip() == report["model_id"]
    model_dir = train.latest_model_dir(out)
    assert model_dir == layout.models_dir / report["model_id"]
    files = {p.name for p in model_dir.iterdir()}
    assert files == {
        "model.cbm",
        "card.json",
        "learning_curve.csv",
        train.TEST_SAMPLE_FILE,
        "forecast.cbm",
        "learning_curve_forecast.csv",
        "latest.parquet",
        "test_forecasts.parquet",
    }
    # LATEST is written after everything it points to.
    latest_mtime = layout.latest_file.stat().st_mtime_ns
    assert all((model_dir / f).stat().st_mtime_ns <= latest_mtime for f in files)
    assert layout.report("train").stat().st_mtime_ns >= latest_mtime

    card = json.loads((model_dir / "card.json").read_text())
    for key in (
        "model_kind",
        "parameters",
        "features",
        "target",
        "formulation",
        "split",
        "rows",
        "dates",
        "data",
        "metrics",
        "library_versions",
        "created",
        "sample",
    ):
        assert key in card, key
    assert card["features"] == [VOL, PRICE]
    assert card["metrics"] == report["metrics"]
    assert card["rows"]["fit"] == report["train_rows"] == 20_000
    assert (
        card["dates"]["train"][1]
        < card["dates"]["validation"][0]
        <= card["dates"]["validation"][1]
        < card["dates"]["test"][0]
        == report["split"]["test_start"]
    )
    assert len(card["data"]["fingerprint"]) == 16

    curve = pd.read_csv(model_dir / "learning_curve.csv")
    assert curve["iteration"].tolist() == list(range(1, 21))
    assert curve["train_loss"].notna().all() and curve["validation_loss"].notna().all()


def test_report_agrees_with_an_independent_recomputation(trained, features_dir):
    out, report = trained
    df = pd.read_parquet(features_dir)
    df = df.sort_values(["Symbol", "Date"])
    df["y"] = df.groupby("Symbol")["Volume"].shift(-1)
    usable = df.dropna(subset=[VOL, PRICE, "y"])
    assert report["dropped_rows"]["dropped"] == len(df) - len(usable)
    dates = np.sort(usable["Date"].unique())
    start = dates[len(dates) - round(len(dates) * 0.2)]
    assert report["split"]["test_start"] == start
    test = usable[usable["Date"] >= start]
    assert report["test_rows"] == len(test)
    y = test["y"].to_numpy(float)
    base = report["metrics"]["baseline_vol_moving_avg"]
    assert base["mae"] == pytest.approx(np.abs(test[VOL].to_numpy() - y).mean(), rel=1e-9)
    assert base["medape"] == pytest.approx(np.median(np.abs(test[VOL].to_numpy() - y) / np.maximum(y, 1)), rel=1e-9)
    today = report["metrics"]["baseline_today_volume"]
    assert today["mae"] == pytest.approx(np.abs(test["Volume"].to_numpy(float) - y).mean(), rel=1e-9)

    # The published model, reloaded, gives exactly the metrics the report claims on those rows.
    model = train.load_model(train.latest_model_dir(out))
    assert model.model_id == report["model_id"]
    pred = model.predict(test[VOL].to_numpy(), test[PRICE].to_numpy())
    assert (pred >= 0).all()
    assert np.abs(pred - y).mean() == pytest.approx(report["metrics"]["model"]["mae"], rel=1e-9)


def test_stored_test_sample_is_test_rows_with_the_models_predictions(trained, features_dir):
    out, report = trained
    sample = train.load_test_sample(train.latest_model_dir(out))
    assert len(sample) == min(train.TEST_SAMPLE_ROWS, report["test_rows"])
    assert (sample["Date"].dt.strftime("%Y-%m-%d") >= report["split"]["test_start"]).all()
    # Each sampled row is a real test row: its target is the same ticker's next Volume (looked up
    # independently in the features dataset by date and both features).
    df = pd.read_parquet(features_dir).sort_values(["Symbol", "Date"])
    df["y"] = df.groupby("Symbol")["Volume"].shift(-1)
    key = ["Date", VOL, PRICE]
    df["Date"] = pd.to_datetime(df["Date"])
    joined = sample.merge(df.drop_duplicates(key)[key + ["y"]], on=key, how="left")
    assert joined["y"].notna().all()
    np.testing.assert_array_equal(joined["y"].to_numpy(float), sample["target"].to_numpy(float))
    model = train.load_model(train.latest_model_dir(out))
    np.testing.assert_array_equal(
        model.predict(sample[VOL].to_numpy(), sample[PRICE].to_numpy()), sample["prediction"].to_numpy()
    )
    np.testing.assert_array_equal(sample["baseline"].to_numpy(), sample[VOL].to_numpy())


def test_saved_model_reloads_and_predicts_identically(tmp_path):
    rng = np.random.default_rng(5)
    vol = rng.lognormal(12, 2, 3000)
    price = rng.lognormal(3, 1, 3000)
    y = vol * rng.lognormal(-0.2, 0.6, 3000)
    for kind in train.MODELS:
        fit = train.fit_model(
            vol,
            price,
            y,
            model=kind,
            iterations=30,
            threads=1,
            valid=(vol[:500], price[:500], y[:500]),
            model_id=f"m-{kind}",
        )
        card = {"model_id": f"m-{kind}", "model_kind": kind, "formulation": {"name": fit.model.formulation}}
        train.save_model(fit.model, tmp_path / kind, card, fit.learning_curve)
        loaded = train.load_model(tmp_path / kind)
        probe_vol = np.concatenate([vol[:200], [0.0, 1.0, 1e9]])
        probe_price = np.concatenate([price[:200], [0.0, 0.01, 5000.0]])
        np.testing.assert_array_equal(loaded.predict(probe_vol, probe_price), fit.model.predict(probe_vol, probe_price))
        assert loaded.model_id == f"m-{kind}" and loaded.card["model_file"] == train.MODEL_FILES[kind]


def test_random_forest_option_runs_on_a_bounded_sample(features_dir, tmp_path):
    out = _output_with(features_dir, tmp_path)
    report = train.run(out, model="random_forest", max_train_rows=3_000, progress=False)
    model_dir = train.latest_model_dir(out)
    card = json.loads((model_dir / "card.json").read_text())
    assert card["model_kind"] == "random_forest" and card["model_file"] == "model.joblib"
    assert card["sample"]["fit_rows"] == 3_000 and "RandomForest capped" in card["sample"]["note"]
    assert card["estimator_params"]["n_estimators"] == train.RF_TREES
    assert report["formulation"]["name"] == "raw"
    curve = pd.read_csv(model_dir / "learning_curve.csv")
    assert len(curve) == train.RF_TREES
    pred = train.load_model(model_dir).predict([1e5, 2e6], [10.0, 50.0])
    assert pred.shape == (2,) and np.isfinite(pred).all() and (pred >= 0).all()


def test_same_day_setup_and_no_catboost_files_in_cwd(features_dir, tmp_path, monkeypatch):
    out = _output_with(features_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    report = train.run(out, target_shift=0, **SMALL)
    # Same-day target: "predict today's Volume" is the target itself.
    assert report["metrics"]["baseline_today_volume"]["mae"] == 0
    assert report["dropped_rows"]["no_target"] == 0
    assert not (tmp_path / "catboost_info").exists()


def test_a_second_run_moves_latest_and_keeps_the_first(trained, features_dir, tmp_path):
    out = _output_with(features_dir, tmp_path)
    first = train.run(out, **SMALL)
    second = train.run(out, split="random", **SMALL)
    assert second["model_id"] > first["model_id"]
    assert train.latest_model_dir(out).name == second["model_id"]
    assert (config.Layout.at(out).models_dir / first["model_id"] / "card.json").exists()
    assert second["split"]["kind"] == "random" and second["split"]["test_start"] is None


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="features stage"):
        train.run(tmp_path / "empty", progress=False)
    with pytest.raises(UserError, match="model must be"):
        train.run(tmp_path / "empty", model="xgboost", progress=False)
    assert train.latest_model_dir(tmp_path / "empty") is None


def test_rows_of_shuffled_files_equal_those_of_sorted_files(features_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from volcast.train.rows import load_rows

    shuffled = tmp_path / "features"
    shuffled.mkdir()
    rng = np.random.default_rng(0)
    for path in sorted(features_dir.glob("part-*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.take(pa.array(rng.permutation(table.num_rows))), shuffled / path.name)
    inputs = list(train.FORECAST_MODEL_INPUTS)
    a = load_rows(features_dir, inputs, max_test_rows=10**9)
    b = load_rows(shuffled, inputs, max_test_rows=10**9)
    assert a.counts == b.counts and a.rows == b.rows and a.split_info == b.split_info

    def test_rows(d):
        frame = pd.DataFrame(
            {
                "Symbol": np.asarray(d.tickers)[d.ticker[d.test]],
                "day": d.day[d.test],
                "target": d.target[d.test],
                "volume": d.volume[d.test],
            }
        )
        x = pd.DataFrame(d.x[d.test], columns=inputs)
        return pd.concat([frame, x], axis=1).sort_values(["Symbol", "day"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(test_rows(a), test_rows(b))


def _role_frame(d, role: str, inputs) -> pd.DataFrame:
    rows = getattr(d, role)
    frame = pd.DataFrame(
        {
            "Symbol": np.asarray(d.tickers)[d.ticker[rows]],
            "day": d.day[rows],
            "next_day": d.next_day[rows],
            "target": d.target[rows],
            "volume": d.volume[rows],
        }
    )
    return pd.concat([frame, pd.DataFrame(d.x[rows], columns=inputs)], axis=1).reset_index(drop=True)


def test_rows_of_partitions_written_as_base_and_deltas_equal_those_of_one_file_each(features_dir, tmp_path):
    """A daily update writes a partition's new rows as delta files (part-<key>~<seq>.parquet) beside its base:
    a ticker's next-day target then comes from the next file, and the training rows must not change."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from volcast import storage
    from volcast.train.rows import load_rows

    dates = np.unique(pd.read_parquet(features_dir, columns=["Date"])["Date"])
    cut1, cut2 = dates[-4], dates[-2]  # base: up to cut1; delta 1: the next two dates; delta 2: the last one
    split = tmp_path / "features"
    split.mkdir()
    written = 0
    for path in sorted(features_dir.glob("part-*.parquet")):
        table = pq.read_table(path)
        key = storage.split_partition_name(path.name)[0]
        day = table["Date"]
        parts = [
            (storage.partition_file(key), pc.less_equal(day, cut1)),
            (storage.delta_file(key, 1), pc.and_(pc.greater(day, cut1), pc.less_equal(day, cut2))),
            (storage.delta_file(key, 2), pc.greater(day, cut2)),
        ]
        for name, mask in parts:
            part = table.filter(mask)
            if part.num_rows:
                pq.write_table(part, split / name)
                written += 1
    assert written > 2 * len(list(features_dir.glob("part-*.parquet")))  # most partitions have both deltas
    inputs = list(train.FORECAST_MODEL_INPUTS)
    kw = dict(max_test_rows=10**9, max_train_rows=5_000)
    a = load_rows(features_dir, inputs, **kw)
    b = load_rows(split, inputs, **kw)
    assert a.counts == b.counts and a.rows == b.rows and a.split_info == b.split_info
    assert a.valid_info == b.valid_info and a.dates == b.dates
    np.testing.assert_array_equal(a.market[0], b.market[0])
    np.testing.assert_allclose(a.market[1], b.market[1], rtol=1e-12)
    # Independently: the last row of a ticker in a base file has a target, the ticker's first delta row's Volume.
    full = pd.read_parquet(features_dir, columns=["Symbol", "Date", "Volume"]).sort_values(["Symbol", "Date"])
    full["next"] = full.groupby("Symbol")["Volume"].shift(-1)
    at_cut = full[(full["Date"] == cut1) & full["next"].notna()].set_index("Symbol")["next"]
    test_b = _role_frame(b, "test", inputs)
    cut_day = (np.datetime64(cut1) - np.datetime64("1970-01-01")).astype(int)
    got = test_b[test_b["day"] == cut_day].set_index("Symbol")["target"]
    assert len(got) > 0 and got.to_dict() == {s: float(at_cut[s]) for s in got.index}
    for role in ("fit", "valid", "test", "band"):
        pd.testing.assert_frame_equal(_role_frame(a, role, inputs), _role_frame(b, role, inputs))


def _usable_frame_in_group_order(features_dir: Path) -> pd.DataFrame:
    """Every usable row (next-day target, the features and ``log_vol_mean30`` present) as pandas sees it: each
    partition group read whole, ordered by Symbol then Date, groups in the reader's order."""
    from volcast.config import LOG_VOL_MEAN30
    from volcast.train.data import _read_group, feature_groups, supervised_rows

    frames = []
    for members in feature_groups(features_dir).values():
        df = _read_group(members, ["Symbol", "Date", "Volume", VOL, PRICE, LOG_VOL_MEAN30]).to_pandas()
        df, target, keep, _ = supervised_rows(df, 1, required=(VOL, PRICE, LOG_VOL_MEAN30))
        frames.append(df.loc[keep, ["Symbol", "Date"]].assign(target=target[keep]))
    out = pd.concat(frames, ignore_index=True)
    out["day"] = (pd.to_datetime(out["Date"]) - pd.Timestamp("1970-01-01")).dt.days
    return out


@pytest.mark.parametrize("split", ["chronological", "random"])
def test_rows_chosen_from_per_date_counts_equal_a_plan_of_every_row(features_dir, split):
    """The reader keeps per-date counts only and finds its sampled rows in a second pass: the rows must be those
    ``data.plan_rows`` draws when it holds every usable row at once, in the same order."""
    from volcast.train.data import plan_rows
    from volcast.train.rows import load_rows

    every = _usable_frame_in_group_order(features_dir)
    plan = plan_rows(every["day"].to_numpy(), split, 0.2, 0.1, max_train_rows=700, seed=7)
    got = load_rows(features_dir, train.FORECAST_MODEL_INPUTS, split=split, max_train_rows=700, seed=7, threads=2)
    assert got.rows["usable"] == len(every) and got.rows["test"] == len(plan.test_rows)
    assert got.rows["fit_pool"] == len(plan.fit_pool) and got.rows["validation_pool"] == len(plan.valid_pool)
    for role, want in (("fit", plan.fit_rows), ("valid", plan.valid_rows), ("test", plan.test_rows)):
        rows = getattr(got, role)
        chosen = pd.DataFrame(
            {"Symbol": np.asarray(got.tickers)[got.ticker[rows]], "day": got.day[rows], "target": got.target[rows]}
        )
        expected = every.iloc[want][["Symbol", "day", "target"]].reset_index(drop=True)
        pd.testing.assert_frame_equal(chosen, expected, check_dtype=False)


def test_rows_do_not_depend_on_the_thread_count(features_dir):
    from volcast.train.rows import load_rows

    kw = dict(max_train_rows=900, max_test_rows=1_500, seed=3)
    a = load_rows(features_dir, train.FORECAST_MODEL_INPUTS, threads=1, **kw)
    b = load_rows(features_dir, train.FORECAST_MODEL_INPUTS, threads=4, **kw)
    assert a.rows == b.rows and a.counts == b.counts and a.dates == b.dates and a.tickers == b.tickers
    for name in ("day", "ticker", "target", "x", "fit", "valid", "test", "band", "ahead"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.store["usable_counts"], b.store["usable_counts"])


def test_evaluation_predicted_in_chunks_equals_scores_of_the_whole_test_frame(features_dir, tmp_path, monkeypatch):
    """Test rows are predicted a chunk at a time (a small chunk here: many chunks); every number the report gives
    for the forecast model must be what scoring the whole test frame at once gives, computed with sklearn."""

    from volcast.train import evaluation

    monkeypatch.setattr(evaluation, "PREDICT_CHUNK", 997)
    out = _output_with(features_dir, tmp_path)
    report = train.run(out, **dict(SMALL, max_test_rows=10**9))
    inputs = list(train.FORECAST_MODEL_INPUTS)
    test = _test_frame(features_dir, report["split"]["test_start"])
    assert report["test_rows"] == len(test)
    card = train.load_card(train.latest_model_dir(out))
    forecaster = train.ForecastModel.load(train.latest_model_dir(out), card["models"]["forecast"])
    p10, p50, p90 = forecaster.predict(test[inputs].to_numpy(np.float32))  # all rows in one call
    y = test["y"].to_numpy(float)
    _assert_scores(report["metrics"]["forecast"], y, p50)
    assert report["coverage_p10_p90"] == pytest.approx(np.mean((y >= p10) & (y <= p90)), rel=1e-12)
    years = pd.to_datetime(test["Date"]).dt.year.to_numpy()
    by_year = pd.Series(np.abs(p50 - y)).groupby(years).mean()
    table = pd.DataFrame(report["by_year"]).set_index("year")["mae_forecast"]
    pd.testing.assert_series_equal(table, by_year, check_names=False, check_index_type=False, rtol=1e-12)


def test_a_warm_started_models_card_metrics_equal_a_plain_evaluation_of_the_reloaded_models(tmp_path):
    """A warm start from the row store (the daily path: ``warm_compare=False``) on a market grown by a few days:
    the card's test metrics must be what the published models, reloaded from disk, score on every usable test row
    recomputed from the features dataset with pandas and sklearn (not the stage's own code)."""
    import importlib.util

    from volcast import features, ingest

    spec = importlib.util.spec_from_file_location(
        "make_daily_source", Path(__file__).resolve().parents[1] / "benchmarks" / "make_daily_source.py"
    )
    mds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mds)
    tree = ingest.generate_demo_market(tmp_path / "full", n_tickers=10, years=2, seed=11)
    src, out = tmp_path / "src", tmp_path / "out"
    mds.init(str(tree), src, 12)
    ingest.run(out, source=str(src))
    features.run(out)
    small = dict(SMALL, jobs=1, max_test_rows=10**9)
    parent = train.run(out, **small)
    assert mds.main(["release", str(src), "6"]) == 0  # six trading days: the split moves, rows are added
    ingest.run(out, source=str(src))
    features.run(out)
    report = train.run(out, warm_start=True, warm_compare=False, **small)
    entry = report["warm_start"]
    assert entry["parent_model_id"] == parent["model_id"] and entry["rows_added"] > 0
    assert entry["rows_read"].startswith("the parent's row store")

    model_dir = train.latest_model_dir(out)
    card = train.load_card(model_dir)
    assert card["model_id"] == report["model_id"] and card["warm_start"]["parent_model_id"] == parent["model_id"]
    forecaster = train.ForecastModel.load(model_dir, card["models"]["forecast"])
    assert forecaster.estimator.tree_count_ == SMALL["forecast_iterations"] + train.warm.WARM_ITERATIONS
    task = train.load_model(model_dir)

    inputs = list(train.FORECAST_MODEL_INPUTS)
    test = _test_frame(config.Layout.at(out).features_dir, report["split"]["test_start"])
    assert card["rows"]["test_scored"] == card["rows"]["test"] == len(test)
    y = test["y"].to_numpy(float)
    p10, p50, p90 = forecaster.predict(test[inputs].to_numpy(np.float32))
    pred = task.predict(test[VOL].to_numpy(), test[PRICE].to_numpy())
    for name, p in (("forecast", p50), ("model", pred)):
        assert card["metrics"][name] == report["metrics"][name]
        _assert_scores(card["metrics"][name], y, p)
    assert card["coverage_p10_p90"] == pytest.approx(np.mean((y >= p10) & (y <= p90)), rel=1e-12)
    years = pd.to_datetime(test["Date"]).dt.year.to_numpy()
    table = pd.DataFrame(card["by_year"]).set_index("year")
    for col, p in (("mae_forecast", p50), ("mae_model", pred)):
        expected = pd.Series(np.abs(p - y)).groupby(years).mean()
        pd.testing.assert_series_equal(table[col], expected, check_names=False, check_index_type=False, rtol=1e-12)
    # ...and the continued models are what is served.
    bundle = train.load_bundle(model_dir)
    bundle.self_check()
    assert bundle.model_id == report["model_id"]


def _test_frame(features_dir, test_start) -> pd.DataFrame:
    """The scored test rows worked out with pandas: every usable row dated from ``test_start``, its
    next-day Volume as ``y`` and the market ratio the stage adds, in Symbol, Date order."""
    from volcast.features.inputs import market_ratio_by_day

    df = pd.read_parquet(features_dir).sort_values(["Symbol", "Date"]).reset_index(drop=True)
    totals = df.groupby("Date")["Volume"].sum()
    df["market_vol_lr"] = df["Date"].map(pd.Series(market_ratio_by_day(totals.to_numpy()), index=totals.index))
    df["y"] = df.groupby("Symbol")["Volume"].shift(-1)
    test = df.dropna(subset=[VOL, PRICE, "log_vol_mean30", "y"])
    return test[test["Date"] >= test_start]


def _assert_scores(got: dict, y: np.ndarray, predicted: np.ndarray) -> None:
    """A card's MAE, RMSE, R2 and median APE equal scikit-learn's / numpy's on the same rows."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    assert got["mae"] == pytest.approx(mean_absolute_error(y, predicted), rel=1e-12)
    assert got["rmse"] == pytest.approx(mean_squared_error(y, predicted) ** 0.5, rel=1e-12)
    assert got["r2"] == pytest.approx(r2_score(y, predicted), rel=1e-12)
    assert got["medape"] == pytest.approx(np.median(np.abs(predicted - y) / np.maximum(y, 1)), rel=1e-12)
