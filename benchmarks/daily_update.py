"""Daily-update benchmark (issue 16): one new trading day on the real tickers, in one run.

    python benchmarks/daily_update.py                       # x1: the 2,758 real tickers, 20 daily updates
    python benchmarks/daily_update.py --train               # + a full train before the last day, then warm start
    python benchmarks/daily_update.py --scale 3 --updates 3 # x3 (8,274 tickers): only when the task says so

Steps: ``make_daily_source.py init`` from ``../shared/data/nasdaq-2023.parquet`` with ``--updates`` days held
back; a full ``run_pipeline.py --stages ingest,features`` on version 0; then each day released and the same
command run again (the daily update). Measured per day: each stage's seconds as the run manifest counts
them (notebook kernel included; features' kernel is started while ingest runs, and counted there: the two
add up to the run's wall time) and as the stage's report counts them (its own work), and the ingest
report's files appended / re-read / unchanged. After the last day: the datasets compared with a full run
on the final tree (pandas.testing), and the features dataset's read time (``pandas.read_parquet``) against
that freshly written one: one read of each first (not counted: the same warm page cache for both), then
interleaved in alternating order, median of ``--repeat``. Each measured step waits until the 1-minute
load average is under ``--max-load`` (a shared machine), up to ``--max-wait`` seconds, and records the load.

Results: ``benchmarks/results/daily_update[_x3].md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PARQUET = ROOT.parent / "shared" / "data" / "nasdaq-2023.parquet"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_for_load(max_load: float, max_wait: float) -> float:
    """Wait until the 1-minute load average is under ``max_load`` (at most ``max_wait`` s); return it."""
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return round(os.getloadavg()[0], 2)


def run_stages(src: Path, out: Path, stages: str, jobs: int, extra: list[str] = ()) -> dict:
    """One ``run_pipeline.py`` run; its manifest's stage seconds and the stage reports' own seconds."""
    cmd = [
        sys.executable,
        str(ROOT / "run_pipeline.py"),
        "--source",
        str(src),
        "--output-dir",
        str(out),
        "--stages",
        stages,
        "--jobs",
        str(jobs),
        "--no-progress",
        *extra,
    ]
    t0 = time.perf_counter()
    c0 = _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - c0
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    manifest = json.loads(max((out / "runs").glob("*/manifest.json")).read_text())
    row = {"wall": round(wall, 2), "cpu": round(cpu, 2)}
    for name, stage in manifest["stages"].items():
        row[f"{name}_manifest"] = stage["seconds"]
        row[f"{name}_status"] = stage["status"]
        report = json.loads((out / "reports" / f"{name}.json").read_text())
        own = report.get("seconds")
        row[f"{name}_own"] = own.get("total") if isinstance(own, dict) else own  # train: a dict with "total"
        if name == "ingest":
            row.update({k: report.get(k) for k in ("files_appended", "files_reread", "files_unchanged")})
        if name == "train":
            row["train_warm"] = report.get("warm_start") is not None and bool(report.get("warm_start"))
    return row


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far: the run's processes, notebook
    kernels and workers included. On a shared machine it moves much less with the load than wall time."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def read_seconds(path: Path) -> float:
    import pandas as pd

    t0 = time.perf_counter()
    pd.read_parquet(path)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--updates", type=int, default=20, help="daily updates (days held back)")
    p.add_argument(
        "--stop-after", type=int, default=0, help="with --days-only: stop after this many days (the first are full)"
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/volcast-daily-bench"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="read-time repeats (median)")
    p.add_argument("--max-load", type=float, default=3.0)
    p.add_argument("--max-wait", type=float, default=900.0)
    p.add_argument("--train", action="store_true", help="a full train after day N-1, a warm start on day N")
    p.add_argument("--reuse-source", action="store_true", help="keep WORK/src if it is at version 0")
    p.add_argument(
        "--days-only",
        action="store_true",
        help="only the daily updates (no fresh run, comparison or read times: x3 memory)",
    )
    p.add_argument(
        "--baseline-days",
        type=int,
        default=3,
        help="on the first days, also a full re-run (--force) of the same tree, interleaved",
    )
    p.add_argument("--name", default="", help="results file name (default daily_update[_xK])")
    p.add_argument(
        "--recompare", action="store_true", help="only compare WORK/out with WORK/full again, into the results file"
    )
    args = p.parse_args(argv)
    if args.recompare:
        name = args.name or "daily_update" + ("" if args.scale == 1 else f"_x{args.scale}")
        result = json.loads((RESULTS / f"{name}.json").read_text())
        result["equal_to_full_run"] = compare(args.work / "out", args.work / "full")
        return _write(result, args.scale, name)
    mds = _module("make_daily_source")
    work = args.work
    src, out, full, ref = work / "src", work / "out", work / "full", work / "ref"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (args.reuse_source and src.exists() and mds.status(src).get("version") == 0):
        mds.init(str(PARQUET), src, args.updates, scale=args.scale)
    init_seconds = round(time.perf_counter() - t0, 1)
    for d in (out, full, ref):
        shutil.rmtree(d, ignore_errors=True)

    days = []
    load = wait_for_load(args.max_load, args.max_wait)
    first = {"day": 0, "load": load, **run_stages(src, out, "ingest,features", args.jobs)}
    print("version 0 (full):", first, flush=True)
    last_day = min(args.updates, args.stop_after or args.updates) if args.days_only else args.updates
    for k in range(1, last_day + 1):
        mds.release(src, "next")
        stages, extra = "ingest,features", []
        if args.train and k == last_day - 1:
            stages = "ingest,features,train"  # the parent model: a full train
        if args.train and k == last_day:
            stages = "ingest,features,train"
            extra = ["--param", "train.warm_start=true", "--param", "train.warm_compare=false"]
        load = (
            wait_for_load(args.max_load, args.max_wait) if k <= 3 or k >= last_day - 1 else round(os.getloadavg()[0], 2)
        )
        if k <= args.baseline_days:
            # The same day as a full re-run, interleaved (the order alternates) so both see the same machine.
            first_full = k % 2 == 0
            base = run_stages(src, ref, "ingest,features", args.jobs, ["--force"]) if first_full else None
            row = {"day": k, "load": load, **run_stages(src, out, stages, args.jobs, extra)}
            base = base or run_stages(src, ref, "ingest,features", args.jobs, ["--force"])
            row["full_rerun"] = {
                key: base[key] for key in ("ingest_manifest", "ingest_own", "features_manifest", "features_own")
            }
        else:
            row = {"day": k, "load": load, **run_stages(src, out, stages, args.jobs, extra)}
        days.append(row)
        print(row, flush=True)

    result = {
        "scale": args.scale,
        "updates": args.updates,
        "jobs": args.jobs,
        "init_seconds": init_seconds,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "version0": first,
        "days": days,
    }
    if args.days_only:
        return _write(result, args.scale, args.name)
    # The final tree, fresh: datasets equal, and the read time of the features dataset.
    load = wait_for_load(args.max_load, args.max_wait)
    fresh = {"load": load, **run_stages(src, full, "ingest,features", args.jobs)}
    print("fresh full run:", fresh, flush=True)

    equal = compare(out, full)
    wait_for_load(args.max_load, args.max_wait)
    reads = {"updated": [], "fresh": []}
    sides = {"updated": out / "data" / "features", "fresh": full / "data" / "features"}
    # One untimed read of each first: the same warm page cache for both sides (the updated dataset's bases were
    # written by version 0, long before the fresh run, and a first read of them can be a cold one); then the
    # order alternates.
    cold = {name: round(read_seconds(path), 3) for name, path in sides.items()}
    for k in range(args.repeat):
        for name in sorted(sides, reverse=bool(k % 2)):
            reads[name].append(read_seconds(sides[name]))
    files = {name: len(list((out / "data" / name).glob("part-*"))) for name in ("raw", "features")}
    result.update(
        fresh=fresh,
        equal_to_full_run=equal,
        features_files=files,
        read_seconds={k: round(statistics.median(v), 3) for k, v in reads.items()},
        read_all={k: [round(x, 3) for x in v] for k, v in reads.items()},
        read_first=cold,  # not counted (see above)
    )
    return _write(result, args.scale, args.name)


def compare(out: Path, full: Path) -> dict:
    """The updated datasets against the fresh ones, row for row after sorting by Symbol then Date (a daily
    update's rows sit in the delta file, read after every base: README, Daily updates)."""
    import pandas as pd

    equal = {}
    for name in ("raw", "features"):
        frames = [
            pd.read_parquet(d / "data" / name).sort_values(["Symbol", "Date"], kind="stable").reset_index(drop=True)
            for d in (out, full)
        ]
        try:
            pd.testing.assert_frame_equal(*frames)
            equal[name] = True
        except AssertionError as exc:
            equal[name] = f"differs: {str(exc)[:200]}"
        del frames
    return equal


def _write(result: dict, scale: int, name: str = "") -> int:
    name = name or "daily_update" + ("" if scale == 1 else f"_x{scale}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def _total(seconds):
    return seconds.get("total") if isinstance(seconds, dict) else seconds


def markdown(r: dict) -> str:
    days = r["days"]
    one = days[:3]

    def med(key):
        values = [d[key] for d in one if d.get(key) is not None]
        return round(statistics.median(values), 2) if values else None

    manifest = [round(d["ingest_manifest"] + d["features_manifest"], 2) for d in one]
    own = [round(d["ingest_own"] + d["features_own"], 2) for d in one]
    v0 = r["version0"]
    full_runs = [d["full_rerun"] for d in one if d.get("full_rerun")]
    n_files = sum(days[0].get(k) or 0 for k in ("files_appended", "files_reread", "files_unchanged"))
    lines = [
        f"# Daily update, x{r['scale']} ({n_files:,} files), {r['updates']} daily updates, --jobs {r['jobs']}",
        "",
        f"Made by `benchmarks/daily_update.py` on {r['host']} ({r['cpus']} CPUs, shared). Source: "
        f"`make_daily_source.py init` from nasdaq-2023.parquet at x{r['scale']} ({r['init_seconds']} s). "
        "Each day: release it, then `run_pipeline.py --stages ingest,features`. "
        "Load = the 1-minute load average when the day started.",
        "",
        "| measure | goal | measured |",
        "|---|---|---|",
        f"| one new day, ingest + features, run manifest (first 3 days) | <= 4 s | {', '.join(map(str, manifest))} s "
        f"(ingest {med('ingest_manifest')} + features {med('features_manifest')}, medians) |",
        f"| the same, the stages' own seconds (reports) | <= 1 s | {', '.join(map(str, own))} s "
        f"(ingest {med('ingest_own')} + features {med('features_own')}) |",
        f"| version 0, a full run of both (manifest / own) | | {v0['ingest_manifest'] + v0['features_manifest']:.2f} / "
        f"{v0['ingest_own'] + v0['features_own']:.2f} s |",
        *(
            [
                f"| the first days as a full re-run (`--force`, interleaved): manifest / own | | "
                f"{', '.join(str(round(b['ingest_manifest'] + b['features_manifest'], 2)) for b in full_runs)} / "
                f"{', '.join(str(round(b['ingest_own'] + b['features_own'], 2)) for b in full_runs)} s |"
            ]
            if full_runs
            else []
        ),
    ]
    if "equal_to_full_run" in r:
        lines += [
            f"| after {r['updates']} updates: datasets equal a full run on the final tree | equal | "
            f"raw {r['equal_to_full_run']['raw']}, features {r['equal_to_full_run']['features']} |",
            f"| after {r['updates']} updates: features read time (pandas.read_parquet), updated / fresh | <= 1.2x | "
            f"{r['read_seconds']['updated']} / {r['read_seconds']['fresh']} s = "
            f"{r['read_seconds']['updated'] / r['read_seconds']['fresh']:.2f}x "
            f"({r['features_files']['features']} files"
            + (
                f"; first reads, not counted: {r['read_first']['updated']} / {r['read_first']['fresh']} s"
                if r.get("read_first")
                else ""
            )
            + ") |",
        ]
    warm = [d for d in days if d.get("train_manifest") is not None]
    if warm:
        for d in warm:
            kind = "warm start" if d.get("train_warm") else "full train (the parent)"
            lines.append(
                f"| day {d['day']}: train, {kind}: manifest / own | <= 5 s at x3 (warm) | "
                f"{d['train_manifest']} / {_total(d['train_own'])} s |"
            )
    based = [d for d in days if d.get("full_rerun")]
    if based:
        lines += [
            "",
            "The same days as a full re-run (`--force`, interleaved with the update), manifest (own) s:",
            "",
            "| day | update: ingest | full re-run: ingest | update: features | full re-run: features |",
            "|---|---|---|---|---|",
        ]
        for d in based:
            b = d["full_rerun"]
            lines.append(
                f"| {d['day']} | {d['ingest_manifest']} ({d['ingest_own']}) | {b['ingest_manifest']} "
                f"({b['ingest_own']}) | {d['features_manifest']} ({d['features_own']}) | "
                f"{b['features_manifest']} ({b['features_own']}) |"
            )
    lines += [
        "",
        "Per day (manifest seconds; own seconds in brackets):",
        "",
        "| day | load | ingest | features | files appended / re-read / unchanged | run CPU s (all processes) |",
        "|---|---|---|---|---|---|",
    ]
    for d in days:
        lines.append(
            f"| {d['day']} | {d['load']} | {d['ingest_manifest']} ({d['ingest_own']}) | "
            f"{d['features_manifest']} ({d['features_own']}) | "
            f"{d.get('files_appended')} / {d.get('files_reread')} / {d.get('files_unchanged')} | {d.get('cpu', '')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
