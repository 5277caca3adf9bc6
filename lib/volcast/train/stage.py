"""The train stage: ``DIR/data/features`` -> ``DIR/models/<model_id>/`` (both models, card, learning
curves, latest-row table, test forecasts), then ``DIR/models/LATEST`` (written last), then
``DIR/reports/train.json``.

Both models are trained in this one stage, one after the other, from one read of the features: they
share the rows, the split and the test evaluation, and the directory they are published in must swap
as one (``volcast.train.forecast``); separate DAG stages would read the features twice.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from .. import config, storage
from ..errors import UserError
from . import raw_scores as RAW
from . import row_store as RS
from . import scoring as M
from . import warm as W
from .card import TARGET_TEXT, _library_versions, build_card, build_report  # noqa: F401 (re-exported)
from .data import _sample
from .evaluation import (  # noqa: F401 (re-exported)
    PREDICTORS,
    TEST_SAMPLE_ROWS,
    Evaluation,
    _har_inputs,
    forecast_rows,
)
from .evaluation import evaluate as _evaluate
from .forecast import LATEST_FILE, TEST_FORECASTS_FILE
from .forecast_model import MODEL_FILE as FORECAST_FILE
from .forecast_model import fit_forecast
from .machine import blas_in_one_thread, small_pages
from .outputs import (  # noqa: F401 (re-exported: the stage's public readers)
    _write_latest,
    load_card,
    load_learning_curve,
    load_test_sample,
    metrics_table,
    read_report,
    write_band,
)
from .params import (
    DEFAULT_DEPTH,
    DEFAULT_FORECAST_ITERATIONS,
    DEFAULT_FORECAST_LEARNING_RATE,
    DEFAULT_ITERATIONS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_MAX_TEST_ROWS,
    DEFAULT_MAX_TRAIN_ROWS,
    DEFAULT_VALIDATION_FRACTION,
    DEFAULT_WARM_START,
    FEATURES,
    FORECAST_MODEL_INPUTS,
    MODELS,
    RF_MAX_ROWS,
    STAGE,
    _check_fraction,
    _check_target_shift,
    _positive_int,
)
from .rows import TEST_FORECAST_DATES, RowSettings, load_rows, market_at  # noqa: F401 (re-exported)
from .task_model import (
    FitResult,
    fit_model,
    latest_model_dir,
    new_model_id,
    resolve_formulation,
    save_model,
)


@small_pages
@blas_in_one_thread
def run(
    output_dir,
    model="catboost",
    target_shift=1,
    split="chronological",
    test_fraction=0.2,
    max_train_rows=DEFAULT_MAX_TRAIN_ROWS,
    iterations=DEFAULT_ITERATIONS,
    seed=42,
    depth=DEFAULT_DEPTH,
    learning_rate=DEFAULT_LEARNING_RATE,
    formulation="auto",
    loss="auto",
    validation_fraction=DEFAULT_VALIDATION_FRACTION,
    jobs=0,
    forecast_iterations=DEFAULT_FORECAST_ITERATIONS,
    max_test_rows=DEFAULT_MAX_TEST_ROWS,
    warm_start=DEFAULT_WARM_START,
    warm_compare=True,
    forecast_learning_rate=DEFAULT_FORECAST_LEARNING_RATE,
    *,
    progress: bool = True,
) -> dict:
    """Train both models on ``DIR/data/features``; publish them, their card, ``LATEST``; write the report.

    - ``model``: the task model, "catboost" or "random_forest" (the task's reference, fitted on at most
      ``RF_MAX_ROWS`` sampled rows). The forecast model is always CatBoost (``forecast_model``).
    - ``target_shift``: target = Volume this many rows later for the same Symbol (0: same day).
    - ``split``/``test_fraction``: chronological (last fraction of dates) or random rows.
    - ``validation_fraction``: the last fraction of the *train* dates (or random train rows) is held
      out of fitting; learning curves and the forecast interval's calibration use it.
    - ``max_train_rows``: a seeded uniform sample of the remaining train rows is fitted (both models).
    - ``formulation``: "auto" (= "ratio" for CatBoost, "raw" for the RF), "ratio", "log_ratio", "raw";
      ``loss``: the task model's CatBoost loss ("auto" = MAE for ratio, RMSE otherwise).
    - ``forecast_iterations``/``forecast_learning_rate``: the forecast model's boosting (depth is shared).
    - ``max_test_rows``: the test metrics are computed on every test row up to this many, else on a seeded
      uniform sample of this many (the card says which: ``rows.test_scored`` of ``rows.test``).
    - ``warm_start``: continue the current model (``models/LATEST``) on the rows added since it was trained
      (``volcast.train.warm``); ``warm_compare``: also fit from scratch on the same rows and report both MAEs.
    - ``jobs``: threads (0 = all cores).
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    layout = config.Layout.at(output_dir)
    if model not in MODELS:
        raise UserError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    target_shift = _check_target_shift(target_shift)
    max_train_rows = _positive_int("max_train_rows", max_train_rows, "rows sampled for fitting")
    max_test_rows = _positive_int("max_test_rows", max_test_rows, "test rows scored at most")
    iterations = _positive_int("iterations", iterations, "boosting rounds")
    forecast_iterations = _positive_int("forecast_iterations", forecast_iterations, "boosting rounds")
    depth = _positive_int("depth", depth, "tree depth, e.g. 6")
    validation_fraction = _check_fraction("validation_fraction", validation_fraction)
    formulation, loss = resolve_formulation(model, formulation, loss)
    threads = config.resolve_jobs(jobs)
    seconds = {}

    t0 = time.perf_counter()
    inputs = list(FORECAST_MODEL_INPUTS)
    parent = W.find_parent(layout.output_dir, model, target_shift, inputs) if warm_start else None
    warm = parent is not None and parent.ok
    settings = RowSettings(target_shift, split, test_fraction, validation_fraction, max_train_rows, max_test_rows, seed)
    data, read_note, digests, row_params = W.read_rows(
        layout, parent if warm else None, inputs, settings, warm_compare=warm_compare, threads=threads
    )
    fit_rows, valid_rows, test_rows = data.fit, data.valid, data.test
    task_rows = fit_rows
    if model == "random_forest" and len(fit_rows) > RF_MAX_ROWS:
        task_rows = np.sort(fit_rows[_sample(len(fit_rows), RF_MAX_ROWS, np.random.default_rng(seed))])
    if warm:
        parent.wait()  # its models load in a thread beside the read of the rows: counted in the load
    seconds["load"] = time.perf_counter() - t0

    latest = latest_model_dir(layout.output_dir)
    model_id = new_model_id(model, after=latest.name if latest is not None else None)

    def fit_both(rows, n_iter, n_iter_forecast, rate, rate_forecast, init_task=None, init_forecast=None):
        valid_task = (
            (data.vol[valid_rows], data.price[valid_rows], data.target[valid_rows]) if len(valid_rows) else None
        )
        task_fit = fit_model(
            data.vol[rows],
            data.price[rows],
            data.target[rows],
            model=model,
            formulation=formulation,
            loss=loss,
            iterations=n_iter,
            depth=depth,
            learning_rate=rate,
            seed=seed,
            threads=threads,
            valid=valid_task,
            model_id=model_id,
            init=init_task,
        )
        fc = fit_forecast(
            data.x[rows],
            data.target[rows],
            inputs,
            iterations=n_iter_forecast,
            depth=depth,
            learning_rate=rate_forecast,
            seed=seed,
            threads=threads,
            init=init_forecast,
            valid=(data.x[valid_rows], data.target[valid_rows]) if len(valid_rows) else None,
        )
        return task_fit, fc

    warm_entry = None
    if not warm or warm_compare:
        fit, (forecaster, fcurve, finfo) = fit_both(
            task_rows, iterations, forecast_iterations, learning_rate, forecast_learning_rate
        )
        seconds["fit_task"], seconds["fit_forecast"] = fit.seconds, finfo["fit_seconds"]
        har_coef = M.fit_har(*_har_inputs(data.x[fit_rows], inputs), data.target[fit_rows])
    if warm:
        added = data.added
        rates = (learning_rate * W.WARM_LEARNING_RATE_FACTOR, forecast_learning_rate * W.WARM_LEARNING_RATE_FACTOR)
        if len(added):
            replay = fit_rows[_sample(len(fit_rows), W.REPLAY_ROWS, np.random.default_rng(seed + 4))]
            rows_warm = np.union1d(added, replay)
            wfit, (wfc, wcurve, winfo) = fit_both(
                rows_warm, W.WARM_ITERATIONS, W.WARM_ITERATIONS, *rates, parent.task, parent.forecaster
            )
        else:  # nothing new: the parent's models, re-evaluated

            def curve(name):  # the parent's: its trees are the model's (empty if it has none)
                path = parent.model_dir / name
                columns = ["iteration", "train_loss", "validation_loss", "metric"]
                return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=columns)

            wfc, wcurve = parent.forecaster, curve("learning_curve_forecast.csv")
            wfit = FitResult(parent.task, curve("learning_curve.csv"), parent.card.get("estimator_params", {}), 0.0)
            winfo = {
                "params": parent.card["models"]["forecast"]["params"],
                "fit_seconds": 0.0,
                "validation_coverage_raw": None,
                "validation_coverage": None,
            }
        maes = None
        if warm_compare:
            y_t, v_t, p_t = data.target[test_rows], data.vol[test_rows], data.price[test_rows]
            full_f = M.metrics(y_t, forecast_rows(forecaster, data.x, test_rows)[1])["mae"]
            warm_f = M.metrics(y_t, forecast_rows(wfc, data.x, test_rows)[1])["mae"]
            full_t = M.metrics(y_t, fit.model.predict(v_t, p_t))["mae"]
            warm_t = M.metrics(y_t, wfit.model.predict(v_t, p_t))["mae"]
            maes = {
                "forecast_mae_full": full_f,
                "forecast_mae_warm": warm_f,
                "forecast_ratio": warm_f / full_f if full_f else None,
                "task_mae_full": full_t,
                "task_mae_warm": warm_t,
                "task_ratio": warm_t / full_t if full_t else None,
                "full_fit_seconds": round(fit.seconds + finfo["fit_seconds"], 2),
            }
        warm_entry = W.card_entry(parent, data.rows["added"], data.dates["added"], data.rows["fit_pool"], maes)
        warm_entry["rows_read"] = read_note
        if data.band_from is not None:
            warm_entry["test_forecasts"] = (
                "the explorer's band keeps the parent's out-of-sample forecasts for the test dates it scored "
                "and adds this model's for the rows added since"
            )
        fit, forecaster, fcurve, finfo = wfit, wfc, wcurve, winfo
        fit.model.model_id = model_id
        seconds["fit_task"], seconds["fit_forecast"] = wfit.seconds, winfo["fit_seconds"]
        har_coef = np.asarray(parent.card["references"]["har"]["coefficients"], dtype=np.float64)
    elif parent is not None:
        warm_entry = {"requested": True, "note": parent.reason}

    t0 = time.perf_counter()
    ev = _evaluate(data, test_rows, fit, forecaster, har_coef, inputs, seed, threads, parent_raw=data.parent_raw)
    seconds["evaluate"] = time.perf_counter() - t0
    if ev.test_raw is not None:  # the next warm start scores only its new trees on these rows
        data.store["test_raw"] = (ev.test_raw, RAW.trees(fit.model, forecaster))
    data.store["band"] = ev.band  # ... and extends this band

    rows = {
        "usable": data.rows["usable"],
        "train_period": data.rows["train_period"],
        "validation_pool": data.rows["validation_pool"],
        "fit_pool": data.rows["fit_pool"],
        "fit": len(task_rows),
        "fit_forecast": len(fit_rows),
        "validation": len(valid_rows),
        "test": data.rows["test"],
        "test_scored": len(test_rows),
        "dropped": data.counts,
    }
    dates = data.dates
    input_ranges = {
        FEATURES[0]: [float(np.min(data.vol[task_rows])), float(np.max(data.vol[task_rows]))],
        FEATURES[1]: [float(np.min(data.price[task_rows])), float(np.max(data.price[task_rows]))],
    }
    files, split_info, valid_info, market = data.files, data.split_info, data.valid_info, data.market
    latest_src = files[0].parent / "_latest.parquet"
    t0 = time.perf_counter()
    known = (RS.load_meta(layout.models_dir, latest.name) or {}).get("files") if latest is not None else None
    digests = digests or RS.file_digests(files, known)
    data.store.setdefault("features", RS.features_state(layout.features_dir))
    # The row store is written while the model directory is published (both mostly file writes, which release
    # the GIL); LATEST switches only once both are written, as before.
    store_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="volcast-row-store")
    storing = store_pool.submit(RS.save, layout.models_dir, model_id, data, row_params, digests)
    store_pool.shutdown(wait=False)  # its one job still runs to the end
    data = None  # the rows are not needed here any more: freed once the store is written

    parameters = {
        "model": model,
        "target_shift": target_shift,
        "split": split,
        "test_fraction": test_fraction,
        "max_train_rows": max_train_rows,
        "iterations": iterations,
        "seed": seed,
        "depth": depth,
        "learning_rate": learning_rate,
        "formulation": formulation,
        "loss": loss,
        "validation_fraction": validation_fraction,
        "threads": threads,
        "forecast_iterations": forecast_iterations,
        "forecast_learning_rate": forecast_learning_rate,
        "max_test_rows": max_test_rows,
        "warm_start": bool(warm_start),
    }
    card = build_card(
        model_id=model_id,
        model=model,
        parameters=parameters,
        warm_entry=warm_entry,
        fit=fit,
        forecaster=forecaster,
        finfo=finfo,
        input_ranges=input_ranges,
        target_shift=target_shift,
        formulation=formulation,
        loss=loss,
        har_coef=har_coef,
        split_info=split_info,
        valid_info=valid_info,
        validation_fraction=validation_fraction,
        seed=seed,
        max_train_rows=max_train_rows,
        rows=rows,
        dates=dates,
        files=files,
        fingerprint=RS.fingerprint(digests),
        evaluation=ev,
    )

    def write_curve(path):
        storage.atomic_write_text(path, fcurve.to_csv(index=False))

    def write_latest(path):
        _write_latest(latest_src, path, inputs, market)

    extras = {
        FORECAST_FILE: forecaster.save,
        "learning_curve_forecast.csv": write_curve,
        LATEST_FILE: write_latest,
        TEST_FORECASTS_FILE: lambda path: write_band(ev.test_forecasts, path),
    }
    model_dir = save_model(
        fit.model, layout.models_dir / model_id, card, fit.learning_curve, ev.test_sample, extras=extras
    )
    storing.result()
    seconds["publish"] = time.perf_counter() - t0  # the row store and the model directory, written side by side
    storage.atomic_write_text(layout.latest_file, model_id + "\n")  # last: readers switch only now

    report = build_report(
        card=card,
        split=split,
        split_info=split_info,
        test_fraction=test_fraction,
        rows=rows,
        warm_entry=warm_entry,
        seed=seed,
        model_dir=model_dir,
        seconds=seconds,
        started=started,
        cpu_started=cpu_started,
        evaluation=ev,
    )
    storage.atomic_write_json(layout.report(STAGE), report)
    return report
