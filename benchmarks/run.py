"""Kaggle-scale benchmark: volcast's stages against the usual references, in one run.

    python benchmarks/run.py                 # x3 scale: ~8,274 files, ~23.6 M rows (tree made if missing)
    python benchmarks/run.py --scale 1       # the 2,758 real tickers as they are
    python benchmarks/run.py --repeat 3      # each measurement 3 times, the fastest kept (shared machines)

Each measured thing runs in its own process; peak RSS is the largest sum of resident memory over that
process and all its children (kernel, worker processes), sampled every 50 ms. Before every measurement
the files it reads are read once (``warm``), so every side starts from the same warm page cache; the
1-minute load average before and after each measurement is kept with it (the machine may be shared).
With ``--repeat N`` the measurements run in N interleaved rounds (each round runs every one of them). Our pipeline is run one
stage at a time through ``run_pipeline.py --force`` so the figures include papermill and kernel start-up.
References (same files, same machine, same run):

- pandas: a ``read_csv`` loop over the files + ``concat`` + ``to_parquet`` (the typical ingest);
- polars: ``read_csv`` over one glob with the schema given (reads only: no validation, no metadata join,
  no write);
- pandas groupby-rolling mean/median over Symbol (the typical feature step);
- polars ``rolling_mean``/``rolling_median`` ``.over("Symbol")``.

The table goes to stdout and ``benchmarks/results/kaggle_scale_x<scale>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "results"

PANDAS_INGEST = """
import glob, os, sys, pandas as pd
tree, out = sys.argv[1], sys.argv[2]
frames = []
for sub in ("stocks", "etfs"):
    for path in sorted(glob.glob(os.path.join(tree, sub, "*.csv"))):
        df = pd.read_csv(path)
        df["Symbol"] = os.path.basename(path)[:-4]
        frames.append(df)
data = pd.concat(frames, ignore_index=True)
data.to_parquet(out)
print(len(data))
"""

# As a competent user writes it (issue 15): one glob over both folders, the schema given instead of
# inferred (Date kept as text, as the raw dataset stores it; Volume as float, since some files write it so),
# and the file path kept, as that is where the ticker comes from.
POLARS_READ = """
import sys, polars as pl
tree = sys.argv[1]
df = pl.read_csv(f"{tree}/*/*.csv", schema_overrides={"Date": pl.String, "Volume": pl.Float64},
                 include_file_paths="file")
print(df.height)
"""

PANDAS_ROLLING = """
import sys, pandas as pd
df = pd.read_parquet(sys.argv[1])
df = df.sort_values(["Symbol", "Date"], kind="stable")
grouped = df.groupby("Symbol", sort=False)
df["vol_moving_avg"] = grouped["Volume"].rolling(30, min_periods=30).mean().reset_index(level=0, drop=True)
df["adj_close_rolling_med"] = grouped["Adj Close"].rolling(30, min_periods=30).median().reset_index(level=0, drop=True)
df.to_parquet(sys.argv[2])
print(len(df))
"""

POLARS_ROLLING = """
import sys, polars as pl
df = pl.read_parquet(sys.argv[1] + "/part-*.parquet").sort(["Symbol", "Date"])
df = df.with_columns(
    pl.col("Volume").cast(pl.Float64).rolling_mean(30).over("Symbol").alias("vol_moving_avg"),
    pl.col("Adj Close").rolling_median(30).over("Symbol").alias("adj_close_rolling_med"),
)
df.write_parquet(sys.argv[2])
print(df.height)
"""


def pipeline_cmd(stage: str, tree: Path, out: Path | str, *extra: str) -> list[str]:
    """Stages (``"ingest"`` or ``"ingest,features"``), from scratch, through run_pipeline.py as a user runs it."""
    return [
        sys.executable,
        str(ROOT / "run_pipeline.py"),
        "--source",
        str(tree),
        "--output-dir",
        str(out),
        "--stages",
        stage,
        "--force",
        "--no-progress",
        *extra,
    ]


def warm(*paths: Path) -> float:
    """Read every file under ``paths`` once (into the page cache); returns the bytes read, in GiB."""
    total = 0
    buf = bytearray(1 << 22)
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else [p for p in sorted(root.rglob("*")) if p.is_file()]
        for path in files:
            with open(path, "rb", buffering=0) as handle:
                while n := handle.readinto(buf):
                    total += n
    return total / 2**30


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def measure(cmd: list[str], label: str, warm_paths: tuple = ()) -> dict:
    """Run a command (after warming ``warm_paths``); wall seconds and peak RSS of its whole process tree,
    and the 1-minute load average before and after."""
    if warm_paths:
        warm(*warm_paths)
    load_before = load1()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peak, peak_at = 0, 0.0
    stop = threading.Event()

    def sample():
        nonlocal peak, peak_at
        try:
            parent = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            total = 0
            try:
                for p in [parent, *parent.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                break
            if total > peak:
                peak, peak_at = total, time.perf_counter() - t0
            stop.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{stderr[-3000:]}")
    load_after = load1()
    print(
        f"  {label}: {seconds:.1f} s, peak RSS {peak / 2**30:.2f} GiB, load {load_before} -> {load_after}", flush=True
    )
    return {
        "label": label,
        "seconds": seconds,
        "peak_rss_gib": peak / 2**30,
        "peak_at_seconds": round(peak_at, 2),  # after the process started
        "load1": [load_before, load_after],
        "stdout": stdout.strip(),
    }


def stage_seconds(out: Path, stage: str) -> float | None:
    """The stage's own time from its report (train reports parts and a total), without papermill and
    kernel start-up."""
    own = json.loads((out / "reports" / f"{stage}.json").read_text()).get("seconds")
    own = own.get("total", own.get("stage")) if isinstance(own, dict) else own
    return own if isinstance(own, (int, float)) else None


def best_of(repeat: int, cmd: list[str], label: str, after=None, warm_paths: tuple = ()) -> dict:
    """``measure`` ``repeat`` times; the fastest run (the least disturbed on a shared machine), with
    every run's seconds kept. ``after(result)`` adds what only that run's files tell."""
    runs = []
    for _ in range(repeat):
        result = measure(cmd, label, warm_paths)
        if after:
            after(result)
        runs.append(result)
    return fastest(runs)


def fastest(runs: list[dict]) -> dict:
    """The fastest of several runs of one thing, with every run's seconds and load averages kept."""
    best = min(runs, key=lambda r: r["seconds"])
    return {
        **best,
        "all_seconds": [round(r["seconds"], 2) for r in runs],
        "all_load1": [r.get("load1") for r in runs],
    }


def ensure_tree(scale: int) -> Path:
    tree = DATA / f"kaggle-x{scale}"
    if not (tree / "symbols_valid_meta.csv").exists():
        print(f"writing the x{scale} Kaggle-layout tree to {tree} ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "make_kaggle_scale.py"),
                "--scale",
                str(scale),
                "--out",
                str(tree),
            ],
            check=True,
        )
    return tree


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--skip-references", action="store_true", help="time only volcast")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each measurement N times and keep the fastest (default 1)"
    )
    args = parser.parse_args(argv)

    tree = ensure_tree(args.scale)
    out = DATA / f"out-x{args.scale}"
    files = sum(1 for sub in ("stocks", "etfs") for _ in (tree / sub).glob("*.csv"))
    size_gib = sum(p.stat().st_size for sub in ("stocks", "etfs") for p in (tree / sub).glob("*.csv")) / 2**30
    print(f"tree: {files:,} files, {size_gib:.2f} GiB of CSV; 2 cores = {os.cpu_count()} here", flush=True)

    py = sys.executable
    ref_parquet = DATA / f"pandas-x{args.scale}.parquet"
    raw = out / "data" / "raw"
    runs: dict[str, list] = {}

    def run(key: str, cmd: list[str], label: str, warm_paths: tuple, stage: str | None = None) -> None:
        result = measure(cmd, label, warm_paths)
        if stage:
            result["stage_seconds"] = stage_seconds(out, stage)
        runs.setdefault(key, []).append(result)

    for round_no in range(args.repeat):  # interleaved: each round measures everything once, same warm cache
        print(f"round {round_no + 1} of {args.repeat}", flush=True)
        shutil.rmtree(out, ignore_errors=True)  # full runs: nothing left from a previous run to reuse
        run("ingest", pipeline_cmd("ingest", tree, out), "volcast ingest", (tree,), "ingest")
        if not args.skip_references:
            run("polars_read", [py, "-c", POLARS_READ, str(tree)], "polars read_csv, one glob, schema given", (tree,))
            run(
                "pandas_ingest",
                [py, "-c", PANDAS_INGEST, str(tree), str(ref_parquet)],
                "pandas read_csv loop + to_parquet",
                (tree,),
            )
        run("features", pipeline_cmd("features", tree, out), "volcast features", (raw,), "features")
        if not args.skip_references:
            # Disk to disk, like the stage: read the raw dataset, compute, write the features.
            run(
                "polars_rolling",
                [py, "-c", POLARS_ROLLING, str(raw), str(DATA / "polars-features.parquet")],
                "polars rolling .over (disk to disk)",
                (raw,),
            )
            run(
                "pandas_rolling",
                [py, "-c", PANDAS_ROLLING, str(raw), str(DATA / "pandas-features.parquet")],
                "pandas groupby-rolling (disk to disk)",
                (raw,),
            )
        run("train", pipeline_cmd("train", tree, out), "volcast train", (out / "data" / "features",), "train")
    ours = {stage: fastest(runs[stage]) for stage in ("ingest", "features", "train")}
    refs = {
        key: fastest(runs[key])
        for key in ("pandas_ingest", "polars_read", "pandas_rolling", "polars_rolling")
        if key in runs
    }
    ingest_report = json.loads((out / "reports" / "ingest.json").read_text())
    rows = ingest_report.get("totals", ingest_report).get("rows_kept")
    train_report = json.loads((out / "reports" / "train.json").read_text())

    total = sum(r["seconds"] for r in ours.values())
    peak = max(r["peak_rss_gib"] for r in ours.values())
    lines = [
        f"## Kaggle-scale benchmark, x{args.scale} ({dt.date.today()})",
        "",
        f"{files:,} CSV files, {size_gib:.2f} GiB, {rows:,} rows kept; {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Python {platform.python_version()}.",
        "",
        "Seconds are wall time of the whole process: for volcast, `run_pipeline.py --stages S --force`,",
        "papermill and kernel start-up included; in brackets the stage's own time from its report.",
        f"Each measurement ran {args.repeat} time(s) in this run, in interleaved rounds, each after reading its",
        "input files once (the same warm page cache for every side); the table keeps the fastest, with the",
        "1-minute load average before -> after it (every run's seconds and loads are in the .json beside it).",
        "",
        "| step | seconds | rows/s | peak RSS (GiB) | load (1 min) |",
        "|---|---:|---:|---:|---|",
    ]
    for label, r in [*((f"volcast {k}", v) for k, v in ours.items()), *((v["label"], v) for v in refs.values())]:
        own = f" ({r['stage_seconds']:.1f})" if r.get("stage_seconds") else ""
        load = " -> ".join(f"{x:.1f}" for x in r["load1"])
        lines.append(
            f"| {label} | {r['seconds']:.1f}{own} | {rows / r['seconds']:,.0f} | {r['peak_rss_gib']:.2f} | {load} |"
        )
    lines.append(f"| **volcast total** | **{total:.1f}** | {rows / total:,.0f} | {peak:.2f} | |")
    if refs:
        lines += [
            "",
            "| ratio | value | goal |",
            "|---|---:|---:|",
            f"| volcast ingest / polars read_csv | {ours['ingest']['seconds'] / refs['polars_read']['seconds']:.2f}x | <= 1.5x |",
            f"| pandas loop / volcast ingest (speed-up) | {refs['pandas_ingest']['seconds'] / ours['ingest']['seconds']:.2f}x | >= 4x |",
            f"| volcast features / polars rolling, disk to disk | {ours['features']['seconds'] / refs['polars_rolling']['seconds']:.2f}x | <= 0.5x |",
            f"| volcast features stage time / polars rolling, disk to disk | {ours['features']['stage_seconds'] / refs['polars_rolling']['seconds']:.2f}x | |",
            f"| volcast features / pandas groupby-rolling | {ours['features']['seconds'] / refs['pandas_rolling']['seconds']:.2f}x | |",
        ]
    m, b = train_report["metrics"]["model"], train_report["metrics"]["baseline_vol_moving_avg"]
    lines += [
        "",
        f"Model {train_report['model_id']}: MAE {m['mae']:,.0f} vs baseline {b['mae']:,.0f} "
        f"({m['mae'] / b['mae']:.3f}x), medAPE {m['medape']:.3f} vs {b['medape']:.3f} "
        f"({m['medape'] / b['medape']:.3f}x), on {train_report['test_rows']:,} test rows.",
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"kaggle_scale_x{args.scale}.md").write_text(table)
    (RESULTS / f"kaggle_scale_x{args.scale}.json").write_text(
        json.dumps({"ours": ours, "references": refs, "rows": rows, "files": files}, indent=2, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
