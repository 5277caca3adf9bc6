"""Warm-start benchmark (issue 16): the train stage continuing yesterday's model on a daily update, against a
full train and against the warm start reading every row (no row store), on the same data in one run.

    python benchmarks/bench_warm_start.py --scale 1             # the 2,758 real tickers
    python benchmarks/bench_warm_start.py --scale 3             # x3 (8,274 tickers): only when the task says so

Steps: ``make_daily_source.py init`` from ``../shared/data/nasdaq-2023.parquet`` with ``--hold-back`` days held back
(default ``--days`` + 2: the source's last two trading days hold 250 and 26 of its 2,758 tickers, so releasing
them measures a day of almost no rows; the days before hold about 2,600 each);
``run_pipeline.py --stages ingest,features`` (version 0); a full train (the parent). Then per day: release it,
``--stages ingest,features`` (the daily update: one delta file per dataset), and the warm start
(``--param train.warm_start=true --param train.warm_compare=false``): it reads the parent's row store and the
files written since. After the last day, on the same data: a full train (``--stages train --force``), then a
warm start from that model with its row store removed (every row read: the warm start as it was). Each
measured run waits until the 1-minute load average is under ``--max-load`` and records it (a shared machine).

Results: ``benchmarks/results/warm_start[_xK].md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from daily_update import PARQUET, RESULTS, _module, run_stages, wait_for_load  # noqa: E402

WARM = ["--param", "train.warm_start=true", "--param", "train.warm_compare=false"]


def measure(src: Path, out: Path, stages: str, jobs: int, extra: list, args) -> dict:
    load = wait_for_load(args.max_load, args.max_wait)
    row = run_stages(src, out, stages, jobs, extra)
    row["load_before"] = load
    row["load_after"] = round(os.getloadavg()[0], 2)
    report = json.loads((out / "reports" / "train.json").read_text())
    row["train_seconds"] = report["seconds"]
    row["train_cpu"] = report.get("cpu_seconds")
    row["rows_read"] = (report.get("warm_start") or {}).get("rows_read")
    row["rows_added"] = (report.get("warm_start") or {}).get("rows_added")
    row["test_scored"] = report.get("test_scored_rows")
    row["mae"] = {k: report["metrics"][k]["mae"] for k in ("model", "forecast")}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--days", type=int, default=2, help="daily updates, each followed by a warm start")
    p.add_argument(
        "--hold-back",
        type=int,
        default=0,
        help="trading days held back at init (default --days + 2: the source's last two days are sparse)",
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/volcast-warm-bench"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--max-load", type=float, default=3.0)
    p.add_argument("--max-wait", type=float, default=600.0)
    p.add_argument("--name", default="")
    args = p.parse_args(argv)
    mds = _module("make_daily_source")
    src, out = args.work / "src", args.work / "out"
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    t0 = time.perf_counter()
    hold_back = args.hold_back or args.days + 2
    if hold_back < args.days:
        raise SystemExit("error: --hold-back must be at least --days")
    mds.init(str(PARQUET), src, hold_back, scale=args.scale)
    init_seconds = round(time.perf_counter() - t0, 1)
    run_stages(src, out, "ingest,features", args.jobs)
    parent = measure(src, out, "train", args.jobs, [], args)
    days = []
    for day in range(1, args.days + 1):
        mds.release(src, "next")
        run_stages(src, out, "ingest,features", args.jobs)
        deltas = sum("~" in p.name for p in (out / "data" / "features").resolve().glob("part-*.parquet"))
        row = measure(src, out, "train", args.jobs, WARM, args)
        row.update(day=day, delta_files=deltas)
        days.append(row)
    full = measure(src, out, "train", args.jobs, ["--force"], args)
    shutil.rmtree(out / "models" / ".warm_cache")
    old = measure(src, out, "train", args.jobs, WARM, args)
    result = {
        "scale": args.scale,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "jobs": args.jobs,
        "init_seconds": init_seconds,
        "hold_back": hold_back,
        "parent_full_train": parent,
        "warm_days": days,
        "full_train_same_data": full,
        "warm_full_read_same_data": old,
    }
    name = args.name or ("warm_start" if args.scale == 1 else f"warm_start_x{args.scale}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(render(result))
    print(render(result))
    return 0


def _own(row: dict) -> str:
    s = row["train_seconds"]
    parts = ", ".join(f"{k} {v}" for k, v in s.items() if k != "total")
    return f"{row['train_manifest']} / **{s['total']}** s ({parts}; CPU {row['train_cpu']} s)"


def render(r: dict) -> str:
    lines = [
        f"# Warm-start train, x{r['scale']}, --jobs {r['jobs']}",
        "",
        f"Made by `benchmarks/bench_warm_start.py` on {r['host']} ({r['cpus']} CPUs, shared). Source: "
        f"`make_daily_source.py init` from nasdaq-2023.parquet at x{r['scale']} ({r['init_seconds']} s, "
        f"{r.get('hold_back', len(r['warm_days']))} trading days held back), one "
        "trading day released per update, `run_pipeline.py --stages ingest,features` (delta files), then the train "
        "stage. Seconds: run manifest (notebook kernel included) / the stage's own (its report), with the report's "
        "parts. Load = 1-minute load average before / after the run.",
        "",
        "| run | load | manifest / own seconds | test rows scored | MAE task / forecast | rows read | rows added (fitted) |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(label, d):
        mae = f"{d['mae']['model']:,.0f} / {d['mae']['forecast']:,.0f}"
        read = d.get("rows_read") or "every row (a full train)"
        load = f"{d['load_before']} / {d['load_after']}"
        added = "" if d.get("rows_added") is None else f"{d['rows_added']:,}"
        return f"| {label} | {load} | {_own(d)} | {d['test_scored']:,} | {mae} | {read} | {added} |"

    lines.append(row("parent: full train on day N", r["parent_full_train"]))
    for d in r["warm_days"]:
        lines.append(row(f"warm start, day N+{d['day']}", d))
    lines.append(row("full train, same data as the last warm start", r["full_train_same_data"]))
    lines.append(row("warm start reading every row (no row store), same data", r["warm_full_read_same_data"]))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
