"""Model evaluation on all 2,758 real tickers, and the training-size / Kaggle-scale benchmark.

    python benchmarks/eval_model.py                    # default model: MAE and medAPE ratios vs vol_moving_avg
    python benchmarks/eval_model.py --variants         # + the table of formulations tried
    python benchmarks/eval_model.py --knee             # + accuracy vs rows fitted, iterations, depth
    python benchmarks/eval_model.py --scale 4          # + train.run at x4 (~31 M rows): time, peak RSS
    python benchmarks/eval_model.py --end-to-end      # + CSV tree + run_pipeline.py (the issue's protocol)
    python benchmarks/eval_model.py --all

Material: ``../shared/data/nasdaq-2023.parquet``. Features are built with ``volcast.features.add_features``
and written as a features dataset (``benchmarks/data/model_eval/x1``), then the training stage runs on
it exactly as the pipeline does (``volcast.train.run``, default parameters): this is the pipeline
minus CSV ingest, which does not change a value (the end-to-end variant writes the parquet out with
``benchmarks/make_kaggle_scale.py`` and runs ``run_pipeline.py``). The x``k`` dataset repeats every ticker
``k`` times under new names (``make_kaggle_scale.copy_names``), so its dates and split are the real ones.

Results accumulate in ``benchmarks/results/model_eval.json`` (each section keeps its last measurement)
and are rendered to ``benchmarks/results/model_eval.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from make_kaggle_scale import DEFAULT_META_ZIP, DEFAULT_PARQUET, build, copy_names  # noqa: E402
from run import measure  # noqa: E402

from volcast import config, features, storage, train  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "model_eval"
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_JSON = RESULTS / "model_eval.json"
RESULTS_MD = RESULTS / "model_eval.md"
GOAL = {"mae": 0.90, "medape": 0.85}

NOTES = """\
- **The MAE goal (≤ 0.90×) is out of reach for any model of these two inputs.** A constant multiple of the
  baseline (0.85 × `vol_moving_avg`, no inputs used) already gets ~0.947× / ~0.877×; every sensible model
  lands at 0.944–0.946× MAE. The oracle rows fit the vol-weighted median ratio per cell of (vol, price)
  bins *on the test answers themselves*: even that, in-sample, reaches only ~0.937× MAE and ~0.851× medAPE
  with 10,000 cells. Tomorrow's volume deviates from the 30-day mean mostly for reasons these two numbers
  do not carry (news, earnings, index events, the last few days' activity).
- **What the model does get**: next-day Volume / `vol_moving_avg` is right-skewed (median ≈ 0.8, mean ≈ 1), so
  a mean-like baseline over-predicts the typical day. Predicting a low quantile of the ratio and scaling back
  is worth ~5.5 % MAE and ~14 % median APE; the inputs add only a size/price-dependent adjustment on top of
  the constant shrink (0.9465 → 0.945 MAE, 0.877 → 0.859 medAPE).
- **Loss**: MAE is minimised by the conditional median (alpha 0.5), median APE by a somewhat lower value.
  The default is chosen on the validation slice (2006-02 → 2011-01, which includes 2008), never on the test
  period: there plain MAE (`loss="MAE"`) beats every quantile tried (0.40-0.47) on both metrics, and scores
  0.9457× / 0.869× on the test set. Alpha 0.45 would show 0.945× / 0.859× on test, but picking it would mean
  choosing with the test set in view. Either way the MAE goal is missed by the same margin.
- Raw-Volume targets lose to the baseline (RMSE 1.26×, MAE 1.16×), as measured before the issue. The task's
  RandomForest (`model="random_forest"`: 100 trees, min_samples_leaf 5, 200,000 sampled rows, raw Volume,
  same split) scores 1.084× MAE and 1.116× medAPE (fit 78 s, peak 1.1 GiB; measured once by hand with
  `train.run`, not by this script).
- What would reach the goal: a third input. "Predict today's Volume" alone is 0.937× MAE and 0.831× medAPE
  of the `vol_moving_avg` baseline; the API takes only the two features.
- **Knee**: beyond 300,000 fitted rows the test ratios move by < 0.001 while fit time grows 7 → 55 → 145 s
  on this (shared) machine: default `max_train_rows=300000`. Iterations 100–1000 and depth 4–8 change the
  ratios by < 0.001; defaults 300 iterations, learning rate 0.1, depth 6 (the learning curve is flat well
  before 300).
"""


# ---------------------------------------------------------------------------------------------
# Features datasets


def build_features(out: Path, parquet: Path = DEFAULT_PARQUET) -> Path:
    """The real tickers -> a features dataset in ``out`` (as the features stage would write it)."""
    layout = config.Layout.at(out)
    if layout.features_dir.exists():
        return out
    t0 = time.perf_counter()
    table = pq.read_table(parquet)
    table = pa.table({
        "Symbol": table["Symbol"], "Security Name": pa.nulls(table.num_rows, pa.string()), "Date": table["Date"],
        **{c: table[c].cast(pa.float64()) for c in config.PRICE_COLUMNS},
        "Volume": table["Volume"].cast(pa.int64()),
    })
    table = table.sort_by([("Symbol", "ascending"), ("Date", "ascending")])
    table = features.add_features(table, jobs=config.resolve_jobs(0)).cast(config.FEATURES_SCHEMA)
    keys = np.array([storage.partition_key(s) for s in table["Symbol"].to_pylist()])
    with storage.publish_dir(layout.features_dir) as staging:
        for key in sorted(set(keys)):
            storage.write_parquet(table.filter(pa.array(keys == key)), staging / storage.partition_file(key))
    print(f"features x1: {table.num_rows:,} rows in {time.perf_counter() - t0:.0f} s -> {layout.features_dir}", flush=True)
    return out


def build_scaled(base: Path, scale: int) -> Path:
    """x``scale``: every ticker of ``base`` repeated under new names, partition by partition."""
    out = DATA / f"x{scale}"
    layout = config.Layout.at(out)
    if layout.features_dir.exists():
        return out
    src = config.Layout.at(base).features_dir.resolve()
    with storage.publish_dir(layout.features_dir) as staging:
        for path in sorted(src.glob("part-*.parquet")):
            table = pq.read_table(path)
            symbols = table["Symbol"].to_pylist()
            names = copy_names(sorted(set(symbols)), scale)
            copies = [table]
            for i in range(1, scale):
                renamed = pa.array([names[s][i] for s in symbols], pa.string())
                copies.append(table.set_column(0, "Symbol", renamed))
            big = pa.concat_tables(copies).sort_by([("Symbol", "ascending"), ("Date", "ascending")])
            storage.write_parquet(big, staging / path.name)
    print(f"features x{scale} -> {layout.features_dir}", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Sections


def section_default(base: Path) -> dict:
    """train.run with its defaults on the real tickers (what the pipeline does)."""
    report = train.run(base, progress=False)
    ratios = report["ratios_vs_vol_moving_avg"]
    return {"params": report["params"], "metrics": report["metrics"], "ratios": ratios,
            "train_rows": report["train_rows"], "test_rows": report["test_rows"], "split": report["split"],
            "dropped_rows": report["dropped_rows"], "seconds": report["seconds"], "model_id": report["model_id"],
            "goal_met": {k: ratios[k] <= GOAL[k] for k in GOAL}}


def _ratios(y, pred, base) -> dict:
    m, b = train.metrics(y, pred), train.metrics(y, base)
    return {"mae": m["mae"] / b["mae"], "medape": m["medape"] / b["medape"]}


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cw, cw[-1] / 2)])


def _binned_oracle(vol, price, y, bins_vol: int, bins_price: int) -> np.ndarray:
    """Per cell of (vol, price) quantile bins OF THE TEST ROWS, the vol-weighted median ratio of the
    test rows themselves: fitted on the answers, so no model of these two inputs does better out of
    sample (a generous bound, it overfits as cells shrink)."""
    kv = pd.qcut(np.log1p(vol), bins_vol, labels=False, duplicates="drop")
    kp = pd.qcut(np.log(np.maximum(price, 1e-4)), bins_price, labels=False, duplicates="drop")
    key = np.asarray(kv, np.int64) * 10_000 + np.asarray(kp, np.int64)
    ratio = y / np.maximum(vol, 1.0)
    frame = pd.DataFrame({"k": key, "r": ratio, "w": np.maximum(vol, 1.0)}).sort_values(["k", "r"])
    frame["cw"] = frame.groupby("k")["w"].cumsum()
    frame["half"] = frame.groupby("k")["w"].transform("sum") / 2
    med = frame[frame["cw"] >= frame["half"]].groupby("k")["r"].first()
    return med.reindex(key).to_numpy() * np.maximum(vol, 1.0)


def _load(base: Path):
    return train.load_supervised(config.Layout.at(base).features_dir, 1)


def section_variants(base: Path, rows: int, iterations: int, threads: int) -> list[dict]:
    data = _load(base)
    plan = train.plan_rows(data.day, max_train_rows=rows, seed=42)
    fit, val, test = data.take(plan.fit_rows), data.take(plan.valid_rows), data.take(plan.test_rows)
    out = []

    def record(name, pred_val, pred_test, note="", seconds=None):
        row = {"variant": name, "validation": _ratios(val.target, pred_val, val.vol),
               "test": _ratios(test.target, pred_test, test.vol), "note": note, "fit_seconds": seconds}
        out.append(row)
        print(f"  {name:42s} val {row['validation']['mae']:.4f}/{row['validation']['medape']:.4f}  "
              f"test {row['test']['mae']:.4f}/{row['test']['medape']:.4f}", flush=True)

    # Constant multiples of the baseline: what a model gets without using the inputs at all.
    c = _weighted_median(fit.target / np.maximum(fit.vol, 1), np.maximum(fit.vol, 1))
    record(f"constant: {c:.3f} x vol_moving_avg", c * val.vol, c * test.vol,
           "vol-weighted median of next/vol_moving_avg on the fitted rows")
    for name, formulation, loss in [
        ("raw Volume, RMSE", "raw", "RMSE"),
        ("raw Volume, MAE", "raw", "MAE"),
        ("log ratio, RMSE (exp back)", "log_ratio", "RMSE"),
        ("log ratio, MAE (exp back)", "log_ratio", "MAE"),
        ("ratio, MAE (default)", "ratio", "MAE"),
        ("ratio, MAPE", "ratio", "MAPE"),
        ("ratio, Quantile alpha=0.40", "ratio", "Quantile:alpha=0.4"),
        ("ratio, Quantile alpha=0.45", "ratio", "Quantile:alpha=0.45"),
        ("ratio, Quantile alpha=0.47", "ratio", "Quantile:alpha=0.47"),
    ]:
        res = train.fit_model(fit.vol, fit.price, fit.target, formulation=formulation, loss=loss,
                              iterations=iterations, threads=threads, seed=42)
        record(name, res.model.predict(val.vol, val.price), res.model.predict(test.vol, test.price),
               seconds=round(res.seconds, 1))
    # Weighting rows by vol_moving_avg makes the ratio loss equal to the volume-scale MAE.
    from catboost import CatBoostRegressor

    t0 = time.perf_counter()
    est = CatBoostRegressor(loss_function="MAE", iterations=iterations, depth=train.DEFAULT_DEPTH,
                            learning_rate=train.DEFAULT_LEARNING_RATE, random_seed=42, thread_count=threads,
                            verbose=False, allow_writing_files=False)
    est.fit(train.design_matrix(fit.vol, fit.price), fit.target / np.maximum(fit.vol, 1), sample_weight=np.maximum(fit.vol, 1))
    wrapped = train.VolumeModel("w", {}, est, "catboost", "ratio")
    record("ratio, MAE weighted by vol_moving_avg", wrapped.predict(val.vol, val.price),
           wrapped.predict(test.vol, test.price), "= MAE on the volume scale", round(time.perf_counter() - t0, 1))
    # Upper bounds: fitted on the test answers themselves.
    for bv, bp in [(20, 1), (50, 10), (200, 50)]:
        pred = _binned_oracle(test.vol, test.price, test.target, bv, bp)
        out.append({"variant": f"oracle bound: {bv}x{bp} cells fitted ON TEST", "validation": None,
                    "test": _ratios(test.target, pred, test.vol),
                    "note": "in-sample on the test rows: no function of the two inputs beats this out of sample "
                            "unless it finds finer structure"})
        print(f"  {out[-1]['variant']:42s} test {out[-1]['test']['mae']:.4f}/{out[-1]['test']['medape']:.4f}", flush=True)
    return out


def section_knee(base: Path, threads: int, sizes, seeds, iteration_grid, depth_grid) -> dict:
    data = _load(base)
    results = {"rows": [], "iterations": [], "depth": []}

    def one(rows, seed, iterations=train.DEFAULT_ITERATIONS, depth=train.DEFAULT_DEPTH,
            learning_rate=train.DEFAULT_LEARNING_RATE):
        plan = train.plan_rows(data.day, max_train_rows=rows, seed=seed)
        fit, val, test = data.take(plan.fit_rows), data.take(plan.valid_rows), data.take(plan.test_rows)
        res = train.fit_model(fit.vol, fit.price, fit.target, iterations=iterations, depth=depth,
                              learning_rate=learning_rate, threads=threads, seed=seed)
        row = {"rows": len(plan.fit_rows), "seed": seed, "iterations": iterations, "depth": depth,
               "learning_rate": learning_rate, "fit_seconds": round(res.seconds, 1),
               "validation": _ratios(val.target, res.model.predict(val.vol, val.price), val.vol),
               "test": _ratios(test.target, res.model.predict(test.vol, test.price), test.vol)}
        print(f"  rows {row['rows']:>9,} seed {seed} it {iterations} depth {depth}: fit {row['fit_seconds']:>5} s  "
              f"val {row['validation']['mae']:.4f}/{row['validation']['medape']:.4f}  "
              f"test {row['test']['mae']:.4f}/{row['test']['medape']:.4f}", flush=True)
        return row

    for rows in sizes:
        for seed in seeds:
            results["rows"].append(one(rows, seed))
    for iterations, lr in iteration_grid:
        results["iterations"].append(one(train.DEFAULT_MAX_TRAIN_ROWS, 42, iterations=iterations, learning_rate=lr))
    for depth in depth_grid:
        results["depth"].append(one(train.DEFAULT_MAX_TRAIN_ROWS, 42, depth=depth))
    return results


def section_scale(base: Path, scale: int) -> dict:
    out = build_scaled(base, scale)
    code = ("import json, sys; from volcast import train; "
            "r = train.run(sys.argv[1], progress=False); "
            "print(json.dumps({k: r[k] for k in ('seconds', 'train_rows', 'test_rows', 'peak_rss_mb', "
            "'ratios_vs_vol_moving_avg', 'dropped_rows')}))")
    got = measure([sys.executable, "-c", code, str(out)], f"train.run x{scale}")
    inner = json.loads(got["stdout"].splitlines()[-1])
    rows = inner["dropped_rows"]["rows_in"]
    return {"scale": scale, "rows": rows, "wall_seconds": round(got["seconds"], 1),
            "peak_rss_gib": round(got["peak_rss_gib"], 2), **inner}


def section_end_to_end() -> dict:
    """The issue's protocol: the parquet written out as Kaggle-layout CSVs, then ``run_pipeline.py``."""
    tree = ROOT / "benchmarks" / "data" / "kaggle-x1"
    if not (tree / "symbols_valid_meta.csv").exists():
        build(DEFAULT_PARQUET, tree, 1, config.resolve_jobs(0), DEFAULT_META_ZIP, progress=False)
    out = DATA / "e2e-x1"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "--source", str(tree), "--output-dir", str(out),
                    "--force", "--no-progress"], check=True, cwd=ROOT)
    report = train.read_report(out)
    return {"seconds": round(time.perf_counter() - t0, 1), "model_id": report["model_id"],
            "ratios": report["ratios_vs_vol_moving_avg"], "metrics": report["metrics"],
            "test_rows": report["test_rows"], "test_start": report["split"]["test_start"],
            "dropped_rows": report["dropped_rows"]}


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(r: dict | None) -> str:
    return "–" if not r else f"{r['mae']:.3f} / {r['medape']:.3f}"


def render(results: dict) -> str:
    env = results.get("environment", {})
    lines = ["# Model evaluation: all 2,758 real tickers (`nasdaq-2023.parquet`)", "",
             f"Generated by `benchmarks/eval_model.py`. Machine: {env.get('cpus')} cores, "
             f"{env.get('platform')}, Python {env.get('python')}; **shared with other work while measured** "
             "(times are indicative; accuracy is not affected).", "",
             "Ratios are model / baseline \"predict `vol_moving_avg`\" on the same test rows (lower is better). "
             f"Goal: MAE ≤ {GOAL['mae']:.2f}×, median APE ≤ {GOAL['medape']:.2f}×.", ""]
    d = results.get("default")
    if d:
        m = d["metrics"]
        lines += ["## Default model (`volcast.train.run()` defaults)", "",
                  f"Target: next trading day's Volume. Split: chronological, test from {d['split']['test_start']} "
                  f"({d['test_rows']:,} test rows); fitted on {d['train_rows']:,} sampled rows; "
                  f"{d['dropped_rows']['dropped']:,} rows dropped (no features: {d['dropped_rows']['no_features']:,}, "
                  f"no target: {d['dropped_rows']['no_target']:,}). Parameters: `{json.dumps(d['params'])}`.", "",
                  "| | MAE | RMSE | R² | median APE |", "|---|---:|---:|---:|---:|"]
        for key, label in [("model", "model"), ("baseline_vol_moving_avg", "baseline: vol_moving_avg"),
                           ("baseline_today_volume", "baseline: today's Volume")]:
            x = m[key]
            lines.append(f"| {label} | {x['mae']:,.0f} | {x['rmse']:,.0f} | {x['r2']:.3f} | {x['medape']:.4f} |")
        r = d["ratios"]
        lines += ["", f"**MAE ratio {r['mae']:.4f}× (goal ≤ {GOAL['mae']}: {'met' if d['goal_met']['mae'] else 'NOT met'}), "
                      f"median APE ratio {r['medape']:.4f}× (goal ≤ {GOAL['medape']}: "
                      f"{'met' if d['goal_met']['medape'] else 'NOT met'}).** "
                      f"Stage time {d['seconds']['total']:.0f} s (fit {d['seconds']['fit']:.0f} s).", ""]
    v = results.get("variants")
    if v:
        lines += ["## What was tried (same fitted rows, validation slice and test rows)", "",
                  f"{v['rows']:,} fitted rows, {v['iterations']} iterations, depth 6. Validation = the last 10 % "
                  "of the train period's dates (2006-02-28 → 2011-01-18), held out of fitting; test from 2011-01-19.", "",
                  "| variant | validation: MAE / medAPE ratio | test: MAE / medAPE ratio | note |",
                  "|---|---|---|---|"]
        for row in v["table"]:
            lines.append(f"| {row['variant']} | {_fmt(row['validation'])} | {_fmt(row['test'])} | {row.get('note', '')} |")
        lines.append("")
    k = results.get("knee")
    if k:
        lines += ["## Accuracy vs rows fitted (the knee) and iterations / depth", "",
                  "| rows fitted | seed | iterations | depth | fit s | validation: MAE / medAPE | test: MAE / medAPE |",
                  "|---:|---:|---:|---:|---:|---|---|"]
        for row in k["rows"] + k["iterations"] + k["depth"]:
            lines.append(f"| {row['rows']:,} | {row['seed']} | {row['iterations']} (lr {row['learning_rate']}) | "
                         f"{row['depth']} | {row['fit_seconds']} | {_fmt(row['validation'])} | {_fmt(row['test'])} |")
        lines.append("")
    e = results.get("end_to_end")
    if e:
        lines += ["## End to end: CSVs + `run_pipeline.py`", "",
                  "`nasdaq-2023.parquet` written as a Kaggle-layout tree (`benchmarks/make_kaggle_scale.py --scale 1`), "
                  "then `python run_pipeline.py --source <tree> --force` (ingest, features, train notebooks via papermill):", "",
                  f"MAE ratio **{e['ratios']['mae']:.4f}×**, median APE ratio **{e['ratios']['medape']:.4f}×** on "
                  f"{e['test_rows']:,} test rows from {e['test_start']} (whole pipeline {e['seconds']:.0f} s).", ""]
    s = results.get("scale")
    if s:
        lines += ["## Kaggle scale", "",
                  f"Every real ticker ×{s['scale']} under new names: {s['rows']:,} feature rows (Kaggle: ~28 M). "
                  "`train.run()` with defaults in a fresh process, 2 cores:", "",
                  "| wall s (process) | load s | fit s | evaluate s | stage total s | peak RSS (process tree) |",
                  "|---:|---:|---:|---:|---:|---:|",
                  f"| {s['wall_seconds']} | {s['seconds']['load']} | {s['seconds']['fit']} | {s['seconds']['evaluate']} | "
                  f"{s['seconds']['total']} | {s['peak_rss_gib']} GiB |", "",
                  "The real tickers all start with A–D, so this dataset has 4 partitions of up to 10 M rows; the "
                  "Kaggle set spreads over ~26 partitions of ~1 M, which lowers the loader's peak.", "",
                  f"Budget: training under 90 s and 4 GB on 2 cores. Fitted rows {s['train_rows']:,}, test rows "
                  f"{s['test_rows']:,}; ratios at this scale {s['ratios_vs_vol_moving_avg']['mae']:.4f} / "
                  f"{s['ratios_vs_vol_moving_avg']['medape']:.4f}.", ""]
    lines += ["## Reading", "", NOTES]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", action="store_true")
    ap.add_argument("--knee", action="store_true")
    ap.add_argument("--scale", type=int, default=0, help="also run train.run at this many copies of every ticker")
    ap.add_argument("--end-to-end", action="store_true", help="also: CSV tree + run_pipeline.py on the real tickers")
    ap.add_argument("--all", action="store_true", help="--variants --knee --scale 4 --end-to-end")
    ap.add_argument("--no-default", action="store_true", help="skip the default-model run")
    ap.add_argument("--variant-rows", type=int, default=train.DEFAULT_MAX_TRAIN_ROWS)
    ap.add_argument("--sizes", default="30000,100000,300000,1000000,3000000")
    ap.add_argument("--seeds", default="42")
    args = ap.parse_args(argv)
    if args.all:
        args.variants = args.knee = args.end_to_end = True
        args.scale = args.scale or 4
    threads = config.resolve_jobs(0)
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    results["environment"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                              "catboost": train._library_versions().get("catboost"),
                              "measured": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    base = build_features(DATA / "x1")

    def save():
        RESULTS.mkdir(parents=True, exist_ok=True)
        storage.atomic_write_json(RESULTS_JSON, results)
        storage.atomic_write_text(RESULTS_MD, render(results) + "\n")

    sections = [
        ("default", not args.no_default, lambda: section_default(base)),
        ("variants", args.variants, lambda: {
            "rows": args.variant_rows, "iterations": train.DEFAULT_ITERATIONS,
            "table": section_variants(base, args.variant_rows, train.DEFAULT_ITERATIONS, threads)}),
        ("knee", args.knee, lambda: section_knee(
            base, threads, [int(x) for x in args.sizes.split(",")], [int(x) for x in args.seeds.split(",")],
            iteration_grid=[(100, 0.2), (300, 0.1), (1000, 0.05)], depth_grid=[4, 8])),
        ("scale", bool(args.scale), lambda: section_scale(base, args.scale)),
        ("end_to_end", args.end_to_end, section_end_to_end),
    ]
    for name, wanted, measure_section in sections:
        if not wanted:
            continue
        print(f"{name}:", flush=True)
        results[name] = measure_section()
        save()  # each section is kept as soon as it is measured
        if name == "default":
            r = results["default"]["ratios"]
            print(f"  MAE ratio {r['mae']:.4f}x, medAPE ratio {r['medape']:.4f}x vs the vol_moving_avg baseline "
                  f"(goal <= {GOAL['mae']}, <= {GOAL['medape']})", flush=True)
    print(f"wrote {RESULTS_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
