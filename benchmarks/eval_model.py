"""Model evaluation on all 2,758 real tickers: both models against every reference, and the x``k`` train stage.

    python benchmarks/eval_model.py                  # train.run defaults on the real tickers: the README's table
    python benchmarks/eval_model.py --inputs         # + the choice of forecasting inputs on the validation slice
    python benchmarks/eval_model.py --scale 3        # + train.run at x3 (23.6 M rows) in a fresh process: time, peak
    python benchmarks/eval_model.py --render         # only re-render the .md from the .json

Material: ``../shared/data/nasdaq-2023.parquet``, written as a raw dataset (Security Name null) and run through
the features stage (``volcast.features.run``) and the train stage (``volcast.train.run``, default parameters)
exactly as the pipeline does, minus CSV ingest, which changes no value. The x``k`` dataset repeats every
ticker ``k`` times under new names (``make_kaggle_scale.copy_names``), so its dates and split are the real ones.

Results accumulate in ``benchmarks/results/model_eval.json`` (each section keeps its last measurement) and
are rendered to ``benchmarks/results/model_eval.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from make_kaggle_scale import DEFAULT_PARQUET, copy_names
from run import measure
from volcast import config, features, storage, train

DATA = ROOT / "benchmarks" / "data" / "model_eval"
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_JSON = RESULTS / "model_eval.json"
RESULTS_MD = RESULTS / "model_eval.md"
# Issue 13's goals for the forecast model.
GOALS = {
    "mae_vs_vma": 0.74,
    "medape_vs_vma": 0.70,
    "mae_vs_today": 0.82,
    "coverage": (0.77, 0.83),
    "x3_seconds": 45.0,
    "x3_peak_gib": 3.0,
}
NAMES = {
    "forecast": "forecast model, P50 (all inputs)",
    "model": "task model (the two API features)",
    "har": "HAR: log volume on log 1/5/22-day means",
    "baseline_vol_moving_avg": "naive: vol_moving_avg",
    "baseline_today_volume": "naive: today's Volume",
}


# ---------------------------------------------------------------------------------------------
# Datasets


def build_x1(out: Path = DATA / "x1", parquet: Path = DEFAULT_PARQUET) -> Path:
    """The real tickers -> a raw dataset -> the features stage (inputs, latest-row table) in ``out``."""
    layout = config.Layout.at(out)
    if (storage.current_version(layout.features_dir) or Path("/nonexistent")).joinpath(features.LATEST_FILE).exists():
        return out
    t0 = time.perf_counter()
    table = pq.read_table(parquet)
    table = pa.table(
        {
            "Symbol": table["Symbol"],
            "Security Name": pa.nulls(table.num_rows, pa.string()),
            "Date": table["Date"],
            **{c: table[c].cast(pa.float64()) for c in config.PRICE_COLUMNS},
            "Volume": table["Volume"].cast(pa.int64()),
        }
    ).sort_by([("Symbol", "ascending"), ("Date", "ascending")])
    keys = np.array([storage.partition_key(s) for s in table["Symbol"].to_pylist()])
    with storage.publish_dir(layout.raw_dir) as staging:
        for key in sorted(set(keys)):
            storage.write_parquet(table.filter(pa.array(keys == key)), staging / storage.partition_file(key))
    del table
    report = features.run(out, incremental=False)
    print(
        f"features x1: {report['rows']:,} rows in {time.perf_counter() - t0:.0f} s -> {layout.features_dir}", flush=True
    )
    return out


def build_scaled(base: Path, scale: int) -> Path:
    """x``scale``: every ticker of ``base`` repeated under new names, partition by partition."""
    out = DATA / f"x{scale}"
    layout = config.Layout.at(out)
    if (storage.current_version(layout.features_dir) or Path("/nonexistent")).joinpath(features.LATEST_FILE).exists():
        return out
    src = config.Layout.at(base).features_dir.resolve()
    with storage.publish_dir(layout.features_dir) as staging:
        for path in [*sorted(src.glob("part-*.parquet")), src / features.LATEST_FILE]:
            table = pq.read_table(path)
            symbols = table["Symbol"].to_pylist()
            names = copy_names(sorted(set(symbols)), scale)
            copies = [table]
            for i in range(1, scale):
                copies.append(table.set_column(0, "Symbol", pa.array([names[s][i] for s in symbols], pa.string())))
            big = pa.concat_tables(copies).sort_by([("Symbol", "ascending"), ("Date", "ascending")])
            storage.write_parquet(big, staging / path.name)
    print(f"features x{scale} -> {layout.features_dir}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Sections


def section_default(base: Path) -> dict:
    """train.run with its defaults on the real tickers (what the pipeline does)."""
    # Every test row is scored here (the stage's default samples 1 M of them above that; this is the README's table).
    report = train.run(base, progress=False, max_test_rows=10**9)
    keep = (
        "model_id",
        "params",
        "metrics",
        "ratios_all_vs_vol_moving_avg",
        "coverage_p10_p90",
        "train_rows",
        "test_rows",
        "test_scored_rows",
        "test_scoring",
        "cpu_seconds",
        "validation_rows",
        "split",
        "dropped_rows",
        "seconds",
        "peak_rss_mb",
        "by_year",
        "by_decile",
    )
    out = {k: report[k] for k in keep}
    out["forecast_card"] = {
        k: report["models"]["forecast"].get(k)
        for k in ("inputs", "interval_widen", "validation_coverage_raw", "validation_coverage", "loss", "fit_seconds")
    }
    return out


def section_inputs(base: Path, threads: int) -> dict:
    """Candidate inputs and training choices, one at a time on top of the previous choice, scored on the
    VALIDATION slice (the last 10 % of the train dates), never the test period. CatBoost median (Quantile 0.5)
    of the log ratio, the forecast model's target."""
    from catboost import CatBoostRegressor

    from volcast.features.calendar import CALENDAR_INPUTS, calendar_inputs

    previous = [
        "log_vol_mean30",
        "vol_lr_0",
        "vol_lr_1",
        "vol_lr_2",
        "vol_lr_3",
        "vol_mean5_lr",
        "vol_mean10_lr",
        "vol_mean22_lr",
        "vol_std30",
        "return_1d",
        "range_hl",
        "weekday",
    ]
    every = list(
        dict.fromkeys(
            previous
            + [c for c in config.FORECAST_INPUTS if c not in CALENDAR_INPUTS and c != "market_vol_lr"]
            + ["dist_52w_high"]
        )
    )
    raw = pq.read_table(config.Layout.at(base).raw_dir)
    table = features.add_features(raw, inputs=every)
    sym = table["Symbol"].to_numpy(zero_copy_only=False)
    day = table["Date"].cast(pa.date32()).cast(pa.int32()).to_numpy().astype(np.int64)
    vol = table["Volume"].to_numpy().astype(np.float64)
    cols = {name: table[name].to_numpy() for name in every}
    cols["market_vol_lr"] = features.market_volume_ratio(day, vol)
    cols.update(calendar_inputs(day))
    price = table[config.PRICE_FEATURE].to_numpy()
    cols["log_price_med30"] = np.log(np.maximum(price, 1e-4))
    vma = table[config.VOL_FEATURE].to_numpy()
    del table, raw
    y = np.full(len(vol), np.nan)
    y[:-1] = np.where(sym[1:] == sym[:-1], vol[1:], np.nan)
    ok = np.isfinite(y) & np.isfinite(vma) & np.isfinite(cols["log_vol_mean30"])
    rows = np.flatnonzero(ok)
    base_log = cols["log_vol_mean30"]

    def score(
        names,
        max_rows=train.DEFAULT_MAX_TRAIN_ROWS,
        iterations=train.DEFAULT_FORECAST_ITERATIONS,
        weight=None,
        lr=train.DEFAULT_LEARNING_RATE,
    ):
        plan = train.plan_rows(day[ok].astype(np.int32), max_train_rows=max_rows)
        fit, val = rows[plan.fit_rows], rows[plan.valid_rows]
        x = np.column_stack([cols[n] for n in names]).astype(np.float32)
        w = None
        if weight is not None:
            w = np.expm1(base_log[fit]) ** weight
            w = w / w.mean()
        m = CatBoostRegressor(
            loss_function="Quantile:alpha=0.5",
            iterations=iterations,
            depth=train.DEFAULT_DEPTH,
            learning_rate=lr,
            random_seed=42,
            thread_count=threads,
            verbose=False,
            allow_writing_files=False,
        )
        t0 = time.perf_counter()
        m.fit(x[fit], np.log1p(y[fit]) - base_log[fit], sample_weight=w)
        pred = np.maximum(np.expm1(m.predict(x[val]) + base_log[val]), 0.0)
        r = train.metrics(y[val], pred)
        b = train.metrics(y[val], vma[val])
        t = train.metrics(y[val], vol[val])
        return {
            "mae": r["mae"] / b["mae"],
            "medape": r["medape"] / b["medape"],
            "mae_vs_today": r["mae"] / t["mae"],
            "fit_seconds": round(time.perf_counter() - t0, 1),
            "fit_rows": len(fit),
            "iterations": iterations,
            "weight": weight,
            "validation_start": plan.valid_info.get("test_start"),
            "validation_rows": len(val),
        }

    steps = [
        ("the previous choice (12 inputs)", [], {}),
        ("+ target-day calendar", list(CALENDAR_INPUTS), {}),
        ("+ market total volume (ratio to its 30-date mean)", ["market_vol_lr"], {}),
        ("+ price level (log adj_close_rolling_med)", ["log_price_med30"], {}),
        ("+ distance from 52-week high", ["dist_52w_high"], {}),
    ]
    table_rows, names = [], list(previous)
    best = None
    for label, extra, kw in steps:
        r = score(names + extra, **kw)
        table_rows.append({"inputs": label, "names": extra or names, **r})
        print(table_rows[-1], flush=True)
        if best is None or r["mae"] < best["mae"]:
            names, best = names + extra, r
            table_rows[-1]["kept"] = True
    chosen = names
    for label, kw in (
        ("chosen, rows weighted by the 30-day mean volume ** 0.5", {"weight": 0.5}),
        ("chosen, rows weighted by the 30-day mean volume ** 1", {"weight": 1.0}),
        ("chosen, 1,000,000 fitted rows", {"max_rows": 1_000_000}),
        ("chosen, 600 iterations", {"iterations": 600}),
    ):
        table_rows.append({"inputs": label, "names": chosen, **score(chosen, **kw)})
        print(table_rows[-1], flush=True)
    return {
        "validation_start": table_rows[0]["validation_start"],
        "fit_rows": table_rows[0]["fit_rows"],
        "validation_rows": table_rows[0]["validation_rows"],
        "table": table_rows,
    }


def section_scale(base: Path, scale: int) -> dict:
    """The pipeline's train stage (``run_pipeline.py --stages train --force``, the 03_train notebook) on the
    x``scale`` copy: wall time and peak RSS of the whole process tree, the stage's own seconds, CPU seconds
    and peak from its report, and the machine's load average around it (the machine is shared)."""
    out = build_scaled(base, scale)
    load_before = os.getloadavg()
    got = measure(
        [
            sys.executable,
            str(ROOT / "run_pipeline.py"),
            "--output-dir",
            str(out),
            "--stages",
            "train",
            "--force",
            "--no-progress",
        ],
        f"train stage x{scale}",
    )
    load_after = os.getloadavg()
    inner = train.read_report(out)
    keep = (
        "seconds",
        "cpu_seconds",
        "train_rows",
        "test_rows",
        "test_scored_rows",
        "peak_rss_mb",
        "ratios_all_vs_vol_moving_avg",
        "coverage_p10_p90",
        "dropped_rows",
    )
    return {
        "scale": scale,
        "rows": inner["dropped_rows"]["rows_in"],
        "wall_seconds": round(got["seconds"], 1),
        "peak_rss_gib": round(inner["peak_rss_mb"] / 1024, 2),
        "tree_peak_rss_gib": round(got["peak_rss_gib"], 2),
        "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
        **{k: inner.get(k) for k in keep},
    }


def _truncated_features(src: Path, out: Path, days_back: int) -> str:
    """``out``'s features dataset = ``src``'s without its last ``days_back`` dates (and its latest-row table
    as of then): the data a model trained ``days_back`` days ago saw. Returns the last date kept."""
    files = sorted(src.glob("part-*.parquet"))
    dates = sorted({d for f in files for d in pq.read_table(f, columns=["Date"])["Date"].unique().to_pylist()})
    cutoff = dates[-days_back - 1]
    layout = config.Layout.at(out)
    lasts = []
    with storage.publish_dir(layout.features_dir) as staging:
        for f in files:
            table = pq.read_table(f).filter(pc.less_equal(pq.read_table(f, columns=["Date"])["Date"], cutoff))
            storage.write_parquet(table, staging / f.name)
            sym = table["Symbol"].to_numpy(zero_copy_only=False)
            if len(sym):
                ends = np.append(np.flatnonzero(sym[1:] != sym[:-1]), len(sym) - 1)
                starts = np.append(0, ends[:-1] + 1)
                last = table.take(pa.array(ends)).cast(config.FEATURES_SCHEMA)
                lasts.append(last.append_column("rows", pa.array(ends - starts + 1, pa.int64())))
        storage.write_parquet(
            pa.concat_tables(lasts).sort_by([("Symbol", "ascending")]), staging / features.LATEST_FILE
        )
    return cutoff


def _full_features(src: Path, out: Path) -> None:
    """Publish ``src``'s features files (hard links) as ``out``'s features dataset: the days arrive."""
    with storage.publish_dir(config.Layout.at(out).features_dir) as staging:
        for f in [*sorted(src.glob("part-*.parquet")), src / features.LATEST_FILE]:
            os.link(f, staging / f.name)


def section_warm(base: Path, scale: int, days_back: int = 5) -> dict:
    """Warm start (issue 16): a model trained ``days_back`` trading days ago, continued on the days since,
    against a full retrain on the same data; and the time of a warm start alone."""
    src = storage.current_version(config.Layout.at(build_scaled(base, scale) if scale > 1 else base).features_dir)
    out = DATA / f"warm-x{scale}"
    layout = config.Layout.at(out)
    cutoff = _truncated_features(src, out, days_back)
    parent = train.run(out, progress=False)
    _full_features(src, out)
    alone = train.run(out, warm_start=True, warm_compare=False, progress=False)
    storage.atomic_write_text(layout.latest_file, parent["model_id"] + "\n")  # continue the same parent again
    both = train.run(out, warm_start=True, progress=False)
    return {
        "scale": scale,
        "days_back": days_back,
        "parent_data_to": cutoff,
        "parent_seconds": parent["seconds"],
        "warm_alone_seconds": alone["seconds"],
        "warm_alone_cpu_seconds": alone.get("cpu_seconds"),
        "warm_alone": alone["warm_start"],
        "compared": both["warm_start"],
        "load_average": os.getloadavg()[0],
    }


# ---------------------------------------------------------------------------------------------
# Report


def _goal_rows(d: dict, scale: dict | None) -> list[tuple]:
    m = d["metrics"]
    f, vma, today, har = m["forecast"], m["baseline_vol_moving_avg"], m["baseline_today_volume"], m["har"]
    cov = d["coverage_p10_p90"]
    rows = [
        (
            "forecast MAE / vol_moving_avg MAE",
            f"{f['mae'] / vma['mae']:.3f}x",
            "<= 0.74x",
            f["mae"] / vma["mae"] <= GOALS["mae_vs_vma"],
        ),
        (
            "forecast median APE / vol_moving_avg's",
            f"{f['medape'] / vma['medape']:.3f}x",
            "<= 0.70x",
            f["medape"] / vma["medape"] <= GOALS["medape_vs_vma"],
        ),
        (
            "forecast MAE / today's Volume MAE",
            f"{f['mae'] / today['mae']:.3f}x",
            "<= 0.82x",
            f["mae"] / today["mae"] <= GOALS["mae_vs_today"],
        ),
        (
            "forecast vs HAR (MAE, median APE)",
            f"{f['mae'] / har['mae']:.3f}x, {f['medape'] / har['medape']:.3f}x",
            "< 1 on both",
            f["mae"] < har["mae"] and f["medape"] < har["medape"],
        ),
        (
            "P10-P90 test coverage",
            f"{100 * cov:.1f} %",
            "80 +/- 3 %",
            GOALS["coverage"][0] <= cov <= GOALS["coverage"][1],
        ),
    ]
    if scale:
        rows += [
            (
                f"train stage at x{scale['scale']}, own time",
                f"{scale['seconds']['total']:.1f} s",
                "<= 45 s",
                scale["seconds"]["total"] <= GOALS["x3_seconds"],
            ),
            (
                f"train stage at x{scale['scale']}, peak memory (process)",
                f"{scale['peak_rss_gib']:.2f} GiB",
                "<= 3 GB",
                scale["peak_rss_gib"] * 2**30 <= GOALS["x3_peak_gib"] * 1e9,
            ),
        ]
    return rows


def render(results: dict) -> str:
    env = results.get("environment", {})
    lines = [
        "# Model evaluation: all 2,758 real tickers (`nasdaq-2023.parquet`)",
        "",
        f"Generated by `benchmarks/eval_model.py` on {env.get('date', '?')}. Machine: {env.get('cpus', '?')} cores, "
        f"Python {env.get('python', '?')}; shared with other work while measured (times are indicative; accuracy "
        "is not affected).",
        "",
    ]
    d = results.get("default")
    if d:
        m = d["metrics"]
        vma, today = m["baseline_vol_moving_avg"], m["baseline_today_volume"]
        lines += [
            "## Both models and every reference, same test rows",
            "",
            f"Target: next trading day's Volume. Split: chronological, test from {d['split']['test_start']} "
            f"({d['test_rows']:,} test rows; metrics on {d.get('test_scoring', 'every test row')}), validation "
            f"from {d['split']['validation_start']}; fitted on {d['train_rows']:,} sampled rows. `volcast.train.run()` defaults: "
            f"`{json.dumps(d['params'])}`.",
            "",
            "| predictor | MAE | RMSE | R² | median APE | MAE / vma | median APE / vma | MAE / today |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in ("forecast", "model", "har", "baseline_vol_moving_avg", "baseline_today_volume"):
            r = m[name]
            r2 = "–" if r["r2"] is None else f"{r['r2']:.3f}"
            lines.append(
                f"| {NAMES[name]} | {r['mae']:,.0f} | {r['rmse']:,.0f} | {r2} | {r['medape']:.4f} | "
                f"{r['mae'] / vma['mae']:.3f}x | {r['medape'] / vma['medape']:.3f}x | {r['mae'] / today['mae']:.3f}x |"
            )
        fc = d["forecast_card"]
        lines += [
            "",
            f"P10-P90 interval: **{100 * d['coverage_p10_p90']:.1f} %** of test rows inside (nominal 80 %). "
            f"On the validation slice the raw quantiles covered {100 * (fc['validation_coverage_raw'] or 0):.1f} %; "
            f"the interval is scaled by {fc['interval_widen']:.3f} around P50 so that 80 % of the validation "
            f"slice falls inside. Forecast inputs: {', '.join(f'`{n}`' for n in fc['inputs'])}. "
            f"Train stage here: {d['seconds']['total']:.1f} s (load {d['seconds']['load']:.1f}, task fit "
            f"{d['seconds']['fit_task']:.1f}, forecast fit {d['seconds']['fit_forecast']:.1f}, evaluate "
            f"{d['seconds']['evaluate']:.1f}), peak {d['peak_rss_mb'] / 1024:.2f} GiB.",
            "",
            "## Goals (issue 13)",
            "",
            "| measure | measured | goal | met |",
            "|---|---:|---:|---|",
        ]
        for label, got, goal, met in _goal_rows(d, results.get("scale")):
            lines.append(f"| {label} | {got} | {goal} | {'yes' if met else '**no**'} |")
        for key, title, col in (
            ("by_year", "By year (test period)", "year"),
            ("by_decile", "By decile of the actual next-day volume", "decile"),
        ):
            lines += [
                "",
                f"## {title}",
                "",
                "Ratios to the `vol_moving_avg` baseline's error on the same rows.",
                "",
                f"| {col} | rows | forecast MAE | forecast medAPE | HAR MAE | HAR medAPE | today MAE | task MAE |"
                + (" P10-P90 coverage |" if key == "by_year" else ""),
                "|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if key == "by_year" else ""),
            ]
            for r in d[key]:
                b_mae, b_med = r["mae_baseline_vol_moving_avg"], r["medape_baseline_vol_moving_avg"]

                def q(a, b):
                    return f"{a / b:.3f}" if b else "–"

                line = (
                    f"| {r[col]} | {r['rows']:,} | {q(r['mae_forecast'], b_mae)} | {q(r['medape_forecast'], b_med)} | "
                    f"{q(r['mae_har'], b_mae)} | {q(r['medape_har'], b_med)} | {q(r['mae_baseline_today_volume'], b_mae)} | "
                    f"{q(r['mae_model'], b_mae)} |"
                )
                if key == "by_year":
                    line += f" {100 * r['coverage_p10_p90']:.1f} % |"
                lines.append(line)
    inp = results.get("inputs")
    if inp:
        lines += [
            "",
            "## Choosing the forecasting inputs (validation slice only)",
            "",
            "CatBoost median (Quantile 0.5) of the log ratio, depth 6, 300 iterations at 0.1 (the earlier "
            f"defaults) unless the row says otherwise, on {inp['fit_rows']:,} sampled train rows; scored on "
            f"{inp['validation_rows']:,} validation rows (from {train.data._iso(inp['validation_start'])}), never on "
            "the test period. Inputs are added one group at a time and kept when the validation MAE falls; then "
            "training choices on the kept inputs. Ratios to the `vol_moving_avg` baseline (and to today's Volume) "
            "on the validation rows; fit seconds on the shared machine.",
            "",
            "| step | MAE / vma | median APE / vma | MAE / today | fit s | kept | names |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        if inp.get("noise_note"):
            lines[-2:-2] = [inp["noise_note"], ""]
        for r in inp["table"]:
            today = f"{r['mae_vs_today']:.4f}" if r.get("mae_vs_today") is not None else "–"
            names = ", ".join(r["names"]) if len(r["names"]) < 8 else f"{len(r['names'])} inputs"
            lines.append(
                f"| {r['inputs']} | {r['mae']:.4f} | {r['medape']:.4f} | {today} | {r.get('fit_seconds', '–')} | "
                f"{'yes' if r.get('kept') else ''} | {names} |"
            )
    sp = results.get("speed_choice")
    if sp:
        lines += [
            "",
            "## The forecast model's boosting (validation slice, chosen inputs + market ratio)",
            "",
            sp["how"],
            "",
            "| setting | fit wall s | fit CPU s | MAE / vma | median APE / vma |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in sp["table"]:
            lines.append(
                f"| {r['setting']} | {r['wall']} | {r['cpu'] if r['cpu'] is not None else '–'} | {r['mae']:.4f} | "
                f"{r['medape']:.4f} |"
            )
        if sp.get("task"):
            lines += [
                "",
                "The task model (CatBoost MAE on next Volume / `vol_moving_avg`, its two inputs), same rows:",
                "",
                "| setting | fit wall s | fit CPU s | MAE / vma | median APE / vma |",
                "|---|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {r['setting']} | {r['wall']} | {r['cpu']} | {r['mae']:.4f} | {r['medape']:.4f} |"
                for r in sp["task"]
            ]
    tc = results.get("target_choice")
    if tc:
        lines += [
            "",
            "## Second round: the target's base, more inputs, capacity (validation slice only)",
            "",
            tc["how"],
            "",
            "| setting | loss | fit CPU s | MAE / vma | median APE / vma | raw P10-P90 coverage |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in tc["table"]:
            cov = f"{100 * r['cov']:.1f} %" if r.get("cov") is not None else "–"
            name = f"**{r['setting']}**" if r.get("chosen") else r["setting"]
            lines.append(f"| {name} | {r['loss']} | {r['cpu']} | {r['mae']:.4f} | {r['medape']:.4f} | {cov} |")
        if tc.get("after"):
            lines += ["", tc["after"]]
    t3 = results.get("third_round")
    if t3:
        lines += [
            "",
            "## Third round: weights, a volume-MAE point model, longer medians, ensembles (validation slice only)",
            "",
            t3["how"],
            "",
            "| group | setting | loss | fit CPU s | MAE / vma | median APE / vma | raw P10-P90 coverage | kept |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for r in t3["table"]:
            cov = f"{100 * r['cov']:.1f} %" if r.get("cov") is not None else "–"
            lines.append(
                f"| {r['group']} | {r['setting']} | {r['loss']} | {r['cpu']} | {r['mae']:.4f} | {r['medape']:.4f} | "
                f"{cov} | {'yes' if r.get('kept') else 'no'} |"
            )
        lines += ["", t3["after"]]
    t4 = results.get("fourth_round")
    if t4:
        lines += [
            "",
            "## Fourth round: importance sampling, the point forecast, ticker-static inputs (validation slice only)",
            "",
            t4["how"],
            "",
            "| group | setting | seeds | fit CPU s (one fit) | MAE / vma, mean (range) | "
            "median APE / vma, mean (range) | raw P10-P90 coverage |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]

        def span(v):
            return f"{np.mean(v):.4f} ({min(v):.4f}-{max(v):.4f})" if len(v) > 1 else f"{v[0]:.4f}"

        for r in t4["table"]:
            cov = f"{100 * r['cov']:.1f} %" if r.get("cov") is not None else "–"
            cpu = r["cpu"] if r.get("cpu") is not None else "–"
            lines.append(
                f"| {r['group']} | {r['setting']} | {len(r['mae'])} | {cpu} | {span(r['mae'])} | "
                f"{span(r['medape'])} | {cov} |"
            )
        lines += ["", t4["after"]]
    s = results.get("scale")
    if s:
        sec = s["seconds"]
        lines += [
            "",
            f"## Train stage at x{s['scale']} ({s['rows']:,} feature rows)",
            "",
            "`run_pipeline.py --stages train --force` (the 03_train notebook, both models, every reference, the "
            f"tables) on the x{s['scale']} copy. Test metrics there: {s.get('test_scored_rows') or 0:,} of "
            f"{s.get('test_rows') or 0:,} test rows (a seeded sample). Own = the stage's own seconds (its report, "
            "no kernel start-up); CPU = its CPU seconds, every thread (2 cores: an idle machine would take about "
            "half of it for the parallel parts). Load average of the shared machine before / after.",
            "",
            "| pipeline wall s | own s | load | task fit | forecast fit | evaluate | CPU s | peak RSS (stage) | "
            "peak RSS (process tree) | load average |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {s['wall_seconds']} | {sec['total']} | {sec['load']} | {sec['fit_task']} | {sec['fit_forecast']} | "
            f"{sec['evaluate']} | {s.get('cpu_seconds')} | {s['peak_rss_gib']} GiB | {s.get('tree_peak_rss_gib')} GiB | "
            f"{' / '.join(str(v) for v in s.get('load_average', []))} |",
        ]
    for w in [results[k] for k in sorted(results) if k.startswith("warm_x")]:
        cmp_ = w["compared"].get("compared_with_full_retrain") or {}
        lines += [
            "",
            f"## Warm start at x{w['scale']} (issue 16)",
            "",
            f"A model trained on the features up to {w['parent_data_to']} (the last {w['days_back']} trading days held "
            f"back), then the days arrive and `train.run(warm_start=True)` continues it on the train rows added "
            f"({w['compared']['rows_added']:,} rows, dates {w['compared']['added_dates'][0]} to "
            f"{w['compared']['added_dates'][1]}: the chronological split moves forward with the new dates, so the "
            f"fitted pool gains the oldest days of the parent's validation slice; the new days themselves are "
            f"test days), plus a replay sample of {w['compared'].get('replay_rows', 0):,} train rows. Same test "
            f"rows for both models. Load average {w['load_average']:.1f}.",
            "",
            "| measure | continued (warm) | full retrain | warm / full |",
            "|---|---:|---:|---:|",
            f"| forecast model MAE | {cmp_.get('forecast_mae_warm', 0):,.0f} | {cmp_.get('forecast_mae_full', 0):,.0f} | "
            f"{cmp_.get('forecast_ratio', 0):.4f} |",
            f"| task model MAE | {cmp_.get('task_mae_warm', 0):,.0f} | {cmp_.get('task_mae_full', 0):,.0f} | "
            f"{cmp_.get('task_ratio', 0):.4f} |",
            f"| stage seconds (own) | {w['warm_alone_seconds']['total']} (warm alone, no comparison; CPU "
            f"{w.get('warm_alone_cpu_seconds')}) | {w['parent_seconds']['total']} (the parent's full run) | |",
            "",
            f"Warm alone: load {w['warm_alone_seconds']['load']} s, fits {w['warm_alone_seconds']['fit_task']} + "
            f"{w['warm_alone_seconds']['fit_forecast']} s, evaluate {w['warm_alone_seconds']['evaluate']} s. "
            f"Note: {w['compared']['note']}.",
        ]
    if results.get("notes"):
        lines += ["", "## Reading", "", results["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", action="store_true", help="score candidate inputs on the validation slice")
    p.add_argument("--scale", type=int, default=0, help="also run train.run at this scale (e.g. 3)")
    p.add_argument("--no-default", action="store_true", help="skip the default section")
    p.add_argument("--warm", type=int, default=0, help="also measure a warm start at this scale (e.g. 1 or 3)")
    p.add_argument("--render", action="store_true", help="only re-render the .md from the .json")
    args = p.parse_args(argv)
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    if not args.render:
        threads = config.resolve_jobs(0)
        results["environment"] = {
            "date": dt.date.today().isoformat(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
        base = build_x1()
        for name, wanted, fn in (
            ("default", not args.no_default, lambda: section_default(base)),
            ("inputs", args.inputs, lambda: section_inputs(base, threads)),
            ("scale", bool(args.scale), lambda: section_scale(base, args.scale)),
            (f"warm_x{args.warm}", bool(args.warm), lambda: section_warm(base, args.warm)),
        ):
            if wanted:
                t0 = time.perf_counter()
                results[name] = fn()
                print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
                RESULTS_JSON.write_text(json.dumps(results, indent=1, default=str) + "\n")
    # Sections of the old single-model evaluation are not produced any more.
    for old in ("variants", "knee", "end_to_end"):
        results.pop(old, None)
    RESULTS_JSON.write_text(json.dumps(results, indent=1, default=str) + "\n")
    RESULTS_MD.write_text(render(results))
    print(RESULTS_MD.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
