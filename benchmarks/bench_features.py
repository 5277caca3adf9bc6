"""Features benchmark: volcast's rolling features against polars and pandas, in one run.

    python benchmarks/bench_features.py                  # x1 (7.88 M rows) and x3 (23.6 M rows)
    python benchmarks/bench_features.py --scales 1 --repeat 5

Data: ``../shared/data/nasdaq-2023.parquet`` (2,758 real tickers) with the 19 rows lacking Volume or
Adj Close dropped (ingest quarantines them) and Volume as int64 (the raw schema); x3 adds two copies
of every ticker under new names (``AAPL`` -> ``AAPL1``, ``AAPL2``), about 23.6 M rows, the size of
the full Kaggle dataset. It is written once as a raw volcast dataset (partitioned by first letter,
sorted by Symbol then Date; ``Security Name`` left null) under ``benchmarks/data/`` and every
measurement reads it back in its own fresh process, so timings and memory do not interfere.

Measured, all on the same sorted rows, window 30 (NaN until 30 rows):

- in memory: ``volcast.features.add_features`` (one process): the two task columns (``inputs=()``, the
  same work as polars') and with every forecasting input (``config.FORECAST_INPUTS``);
  polars ``rolling_mean(30)`` / ``rolling_median(30)`` ``.over("Symbol")`` (multi-threaded);
  pandas ``groupby("Symbol").rolling(30)`` mean / median; plus the calendar window "30D" for
  volcast and polars' ``rolling_*_by("Date", "30d")``;
- the whole stage from disk to disk: ``volcast.features.run(jobs=2)`` (read each partition, compute,
  write zstd Parquet, publish) against polars reading the same files, computing and writing one
  zstd Parquet file.

Memory: the measuring process's peak RSS during the steps (VmHWM reset after loading, so the
Parquet reader's transient peak is not counted; the loaded data is) plus a forked helper's own
share (its peak RSS minus the pages it shares with the parent); for the stage, the sampled peak of
the summed RSS of the whole process tree (forkserver workers). Compared with the dataset's size as
an Arrow table.
Results: stdout, ``benchmarks/results/features.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NASDAQ = ROOT.parent / "shared" / "data" / "nasdaq-2023.parquet"
DATA = ROOT / "benchmarks" / "data"
RESULTS = ROOT / "benchmarks" / "results"
WINDOW = 30

IN_MEMORY = {
    "volcast add_features, the two task columns": "ours",
    "volcast add_features, + every forecasting input": "ours_inputs",
    "polars rolling_*(30).over": "polars",
    "pandas groupby-rolling": "pandas",
    "volcast add_features '30D', the two task columns": "ours_30d",
    "polars rolling_*_by('30d').over": "polars_30d",
}
STAGE = {
    "volcast features.run(jobs=2), disk to disk": "stage_ours",
    "polars read + rolling + write, disk to disk": "stage_polars",
}


# ---------------------------------------------------------------------------------------------
# Data


def raw_dataset(scale: int) -> Path:
    """The x``scale`` raw dataset under benchmarks/data (written once, reused)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from volcast import config, storage

    out = DATA / f"features-raw-x{scale}"
    if (out / "DONE").exists():
        return out
    print(f"writing the x{scale} raw dataset to {out} ...", flush=True)
    base = pq.read_table(NASDAQ)
    base = base.filter(pc.and_(pc.is_valid(base["Volume"]), pc.is_valid(base["Adj Close"])))
    copies = []
    for k in range(scale):
        sym = base["Symbol"] if k == 0 else pc.binary_join_element_wise(base["Symbol"], pa.scalar(str(k)), "")
        copies.append(
            pa.table(
                {
                    "Symbol": sym,
                    "Security Name": pa.nulls(base.num_rows, pa.string()),
                    "Date": base["Date"],
                    **{c: base[c] for c in config.PRICE_COLUMNS},
                    "Volume": base["Volume"].cast(pa.int64()),
                }
            )
        )
    table = pa.concat_tables(copies).cast(config.RAW_SCHEMA)
    table = table.sort_by([("Symbol", "ascending"), ("Date", "ascending")])
    # Partition as ingest does (storage.partition_key); sorted rows make each partition one run.
    counts = pc.value_counts(table["Symbol"])
    sizes: dict[str, int] = {}
    for sym, count in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
        key = storage.partition_key(sym)
        sizes[key] = sizes.get(key, 0) + count
    with storage.publish_dir(out / "data" / "raw") as staging:
        start = 0
        for key in sorted(sizes):
            storage.write_parquet(table.slice(start, sizes[key]), staging / storage.partition_file(key))
            start += sizes[key]
    (out / "DONE").write_text("ok\n")
    return out


def load_table(scale: int):
    import pyarrow.parquet as pq

    return pq.read_table(raw_dataset(scale) / "data" / "raw")


# ---------------------------------------------------------------------------------------------
# One measurement (runs in its own process)


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak() -> bool:
    """Restart this process's peak-RSS counter (Linux ``clear_refs``), so loading the data (whose
    reader has its own transient peak) does not count as the step's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def own_peak() -> int:
    """Peak RSS since the last reset_peak (VmHWM), else since the start (ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peaks(base_rss: int) -> dict:
    """Peak memory of this process during the steps, and of the helper processes it forked.

    A forked helper's RSS includes the parent's pages resident at the fork (shared, not copied), so
    its own share is estimated as its peak minus the parent's RSS before the step (``base_rss``).
    """
    import resource

    own = own_peak()
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"peak_self": own, "peak_child": child, "peak_total": own + max(0, child - base_rss) * (child > 0)}


class TreeSampler:
    """Peak of the summed RSS of this process and all its descendants, sampled every 50 ms.

    For the stage, whose workers are started by a forkserver (not children ``ru_maxrss`` sees).
    Pages the workers share with the forkserver (imported libraries) are counted once per worker.
    """

    def __init__(self):
        import psutil

        self.proc, self.peak = psutil.Process(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def worker(case: str, scale: int, repeat: int) -> dict:
    import polars as pl

    from volcast import config, features, storage

    if case.startswith("stage_"):
        src = raw_dataset(scale)
        parquet_bytes = sum(p.stat().st_size for p in (src / "data" / "raw").glob("part-*.parquet"))
        base = rss()
        out = DATA / f"features-out-x{scale}-{case}"
        (out / "data").mkdir(parents=True, exist_ok=True)
        link = out / "data" / "raw"
        if not link.exists():
            link.symlink_to(src / "data" / "raw")
        seconds = []
        with TreeSampler() as sampler:
            for _ in range(repeat):
                storage.remove_published(out / "data" / "features")  # a full run, not an incremental no-op
                t0 = time.perf_counter()
                if case == "stage_ours":
                    features.run(out, window=WINDOW, jobs=2)
                else:
                    df = pl.read_parquet(str(link / "*.parquet")).with_columns(
                        pl.col("Volume").rolling_mean(WINDOW).over("Symbol").alias(config.VOL_FEATURE),
                        pl.col("Adj Close").rolling_median(WINDOW).over("Symbol").alias(config.PRICE_FEATURE),
                    )
                    df.write_parquet(out / "polars.parquet", compression="zstd")
                    del df
                seconds.append(time.perf_counter() - t0)
        return {"seconds": seconds, "parquet_bytes": parquet_bytes, "base_rss": base, "peak_total": sampler.peak}

    table = load_table(scale)
    rows, data_bytes = table.num_rows, table.nbytes
    vol, med = config.VOL_FEATURE, config.PRICE_FEATURE
    if case == "interleaved":
        # The same process alternates the three, so a busy moment on a shared machine hits all
        # of them alike; each one's best is compared.
        frame = pl.from_arrow(table)
        steps = {
            "ours": lambda: features.add_features(table, WINDOW, inputs=()),
            "ours_inputs": lambda: features.add_features(table, WINDOW),
            "polars": lambda: frame.with_columns(
                pl.col("Volume").rolling_mean(WINDOW).over("Symbol").alias(vol),
                pl.col("Adj Close").rolling_median(WINDOW).over("Symbol").alias(med),
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in steps}
        for run in steps.values():
            run()  # warm-up, untimed
        for k in range(repeat):
            for name in list(steps)[k % 3 :] + list(steps)[: k % 3]:
                t0 = time.perf_counter()
                steps[name]()
                times[name].append(time.perf_counter() - t0)
        return {"times": times}
    if case.startswith("polars"):
        data = pl.from_arrow(table)
        if case == "polars_30d":  # polars needs a real date column for a calendar window
            data = data.with_columns(pl.col("Date").str.to_date())
    elif case == "pandas":
        data = table.select(["Symbol", "Date", "Volume", "Adj Close"]).to_pandas()
    else:
        data = table
    table = None  # only `data` is kept alive from here on

    def step():
        if case == "ours":
            return features.add_features(data, WINDOW, inputs=())
        if case == "ours_inputs":
            return features.add_features(data, WINDOW)
        if case == "ours_30d":
            return features.add_features(data, "30D", inputs=())
        if case == "polars":
            return data.with_columns(
                pl.col("Volume").rolling_mean(WINDOW).over("Symbol").alias(vol),
                pl.col("Adj Close").rolling_median(WINDOW).over("Symbol").alias(med),
            )
        if case == "polars_30d":
            return data.with_columns(
                pl.col("Volume").rolling_mean_by("Date", window_size="30d").over("Symbol").alias(vol),
                pl.col("Adj Close").rolling_median_by("Date", window_size="30d").over("Symbol").alias(med),
            )
        if case == "pandas":
            grouped = data.groupby("Symbol", sort=False)
            return data.assign(
                **{
                    vol: grouped["Volume"].rolling(WINDOW).mean().to_numpy(),
                    med: grouped["Adj Close"].rolling(WINDOW).median().to_numpy(),
                }
            )
        raise SystemExit(f"unknown case {case}")

    base = rss()
    step()  # warm-up, untimed: the first touch of fresh memory is slow on this VM, for everyone
    reset_peak()
    seconds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = step()
        seconds.append(time.perf_counter() - t0)
        del result
    return {"seconds": seconds, "rows": rows, "data_bytes": data_bytes, "base_rss": base, **peaks(base)}


# ---------------------------------------------------------------------------------------------
# Driver


def measure(case: str, scale: int, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", case, "--scales", str(scale), "--repeat", str(repeat)]
    # The system allocator hands freed memory back at once, so RSS after loading is the data's.
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{case} x{scale} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_equal(scale: int) -> str:
    """Our features equal polars' on the x1 rows (same NaN pattern, values within 1e-12)."""
    import numpy as np
    import polars as pl

    from volcast import config, features

    table = load_table(scale)
    ours = features.add_features(table, WINDOW, inputs=())
    ref = pl.from_arrow(table.select(["Symbol", "Volume", "Adj Close"])).with_columns(
        pl.col("Volume").rolling_mean(WINDOW).over("Symbol").alias("v"),
        pl.col("Adj Close").rolling_median(WINDOW).over("Symbol").alias("m"),
    )
    worst = 0.0
    for mine, theirs in ((config.VOL_FEATURE, "v"), (config.PRICE_FEATURE, "m")):
        a = ours[mine].to_numpy()
        b = ref[theirs].to_numpy()
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            return "NaN patterns differ"
        ok = ~np.isnan(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-300)
        worst = max(worst, float(rel.max()) if rel.size else 0.0)
    return f"equal NaN pattern; max relative difference {worst:.1e}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (the best counts)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the interleaved ours/polars timing")
    parser.add_argument("--pandas-max-scale", type=int, default=3, help="skip pandas above this scale")
    parser.add_argument("--no-stage", action="store_true", help="skip the disk-to-disk stage comparison")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.scales[0], args.repeat)))
        return 0

    import psutil

    gib = 2**30
    results: dict[str, dict] = {}
    lines = [
        f"## volcast features benchmark ({dt.date.today()})",
        "",
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / gib:.0f} GiB RAM, Python "
        f"{platform.python_version()}. The machine was SHARED with other jobs while measuring (load "
        f"average {os.getloadavg()[0]:.1f} at the start): times are the best of {args.repeat} runs and "
        "still noisy.",
        "",
        "Peak = the measuring process's peak RSS during the steps (the loaded data included, the "
        "Parquet reader's transient peak while loading not) plus a forked helper's own "
        "share (its peak RSS minus the parent's RSS before the step); for the disk-to-disk stage rows, "
        "the sampled peak (50 ms) of the summed RSS of the whole process tree. Data = the dataset as an "
        "Arrow table in memory.",
        "",
    ]
    for scale in args.scales:
        raw_dataset(scale)
        cases = dict(IN_MEMORY)
        if scale > args.pandas_max_scale:
            cases.pop("pandas groupby-rolling")
        if not args.no_stage:
            cases.update(STAGE)
        for label, case in cases.items():
            print(f"x{scale} {label} ...", flush=True)
            r = measure(case, scale, args.repeat)
            r["best"] = min(r["seconds"])
            results[f"x{scale}/{case}"] = {"label": label, **r}
            print(
                f"  best {r['best']:.2f} s (runs {', '.join(f'{s:.2f}' for s in r['seconds'])}), "
                f"peak {r['peak_total'] / gib:.2f} GiB",
                flush=True,
            )
        print(f"x{scale} interleaved volcast / polars, {args.rounds} rounds ...", flush=True)
        inter = measure("interleaved", scale, args.rounds)["times"]
        results[f"x{scale}/interleaved"] = inter
        first = results[f"x{scale}/ours"]
        rows, data = first["rows"], first["data_bytes"]
        lines += [
            f"### x{scale}: {rows:,} rows, {data / gib:.2f} GiB as an Arrow table "
            f"({results.get(f'x{scale}/stage_ours', {}).get('parquet_bytes', 0) / gib:.2f} GiB as zstd Parquet)",
            "",
            "| step | best s | vs polars | peak GiB | peak / data |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, case in cases.items():
            r = results[f"x{scale}/{case}"]
            ref = "stage_polars" if case.startswith("stage") else "polars_30d" if case.endswith("30d") else "polars"
            lines.append(
                f"| {label} | {r['best']:.2f} | {r['best'] / results[f'x{scale}/{ref}']['best']:.2f}x | "
                f"{r['peak_total'] / gib:.2f} | {r['peak_total'] / data:.2f}x |"
            )
        best = {name: min(ts) for name, ts in inter.items()}
        ratio = best["ours"] / best["polars"]
        ours = results[f"x{scale}/ours"]
        lines += [
            "",
            f"Interleaved in one process ({args.rounds} rounds, best / median s): "
            + "; ".join(
                f"{label} {min(inter[k]):.2f} / {sorted(inter[k])[len(inter[k]) // 2]:.2f}"
                for label, k in (
                    ("volcast task columns", "ours"),
                    ("volcast + inputs", "ours_inputs"),
                    ("polars", "polars"),
                )
            )
            + ".",
            "",
            f"Goals at x{scale}: volcast (task columns) <= 0.5x polars: {ratio:.2f}x interleaved "
            f"({'met' if ratio <= 0.5 else 'NOT met'}); peak memory <= 3x data: "
            f"{ours['peak_total'] / data:.2f}x ({'met' if ours['peak_total'] <= 3 * data else 'NOT met'}).",
            "",
        ]
    lines += ["Check (x1, window 30): volcast vs polars: " + check_equal(args.scales[0]) + "."]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "features.md").write_text(table)
    (RESULTS / "features.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
