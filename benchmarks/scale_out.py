"""Scaling out, measured: the dask executor against the local one, and a run to s3:// against local disk.

    python benchmarks/scale_out.py --scale 1 --repeat 2            # both parts
    python benchmarks/scale_out.py --scale 3 --only dask           # x3, executors only

1. ``--executor dask`` on a 2-worker LocalCluster against the default local executor, interleaved in one
   run: ingest + features through ``run_pipeline.py --force`` from an empty output directory. Two dask
   forms: ``--executor dask`` alone (the run starts its LocalCluster: its start-up is paid), and
   ``--scheduler`` on a cluster this script started before (a cluster that is already running).
2. The whole run (ingest, features, train) to ``s3://`` on a loopback S3 endpoint (moto's server,
   started here) against the same run to local disk; each s3 run starts from an empty bucket prefix
   and an empty working copy.

Source: the Kaggle-layout tree ``benchmarks/make_kaggle_scale.py`` writes (x1: 7.88 M rows, 2,758
files). Every command is measured as a whole process (wall seconds, peak RSS of its process tree);
the stages' own seconds come from their reports. Results: ``benchmarks/results/scale_out_x<scale>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, ensure_tree, load1, measure, pipeline_cmd, stage_seconds  # noqa: E402  (benchmarks/run.py)

RESULTS = ROOT / "benchmarks" / "results"


def own_seconds(report_dir: Path, stages: list[str]) -> dict:
    out = {}
    for stage in stages:
        seconds = json.loads((report_dir / f"{stage}.json").read_text()).get("seconds")
        out[stage] = seconds.get("total", seconds.get("stage")) if isinstance(seconds, dict) else seconds
    return out


def bench_executors(tree: Path, work: Path, repeat: int) -> dict:
    import distributed

    stages = ["ingest", "features"]
    results: dict[str, list] = {
        "local": [],
        "dask (LocalCluster started by the run)": [],
        "dask (cluster already running)": [],
    }
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        commands = {
            "local": ("--executor", "local"),
            "dask (LocalCluster started by the run)": ("--executor", "dask"),
            "dask (cluster already running)": ("--executor", "dask", "--scheduler", cluster.scheduler_address),
        }
        for _ in range(repeat):  # interleaved: each round runs every variant once
            for label, extra in commands.items():
                out = work / label.split()[0]
                shutil.rmtree(out, ignore_errors=True)
                cmd = pipeline_cmd(",".join(stages), tree, str(out), "--jobs", "2", *extra)
                result = measure(cmd, label, (tree,))
                result["own_seconds"] = own_seconds(out / "reports", stages)
                results[label].append(result)
    return {label: _best(runs) for label, runs in results.items()}


def _best(runs: list[dict]) -> dict:
    best = min(runs, key=lambda r: r["seconds"])
    return {
        "seconds": round(best["seconds"], 2),
        "peak_rss_gib": round(best["peak_rss_gib"], 2),
        "own_seconds": best.get("own_seconds"),
        "load1": best.get("load1"),
        "all_seconds": [round(r["seconds"], 2) for r in runs],
        "all_load1": [r.get("load1") for r in runs],
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_s3(tree: Path, work: Path, repeat: int) -> dict:
    import fsspec
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir("bench")
    stages = ["ingest", "features", "train"]
    results: dict[str, list] = {"local disk": [], "s3:// (loopback moto)": []}
    try:
        for i in range(repeat):
            out = work / "local-disk"
            shutil.rmtree(out, ignore_errors=True)
            result = measure(pipeline_cmd(",".join(stages), tree, str(out), "--jobs", "2"), "local disk", (tree,))
            result["own_seconds"] = own_seconds(out / "reports", stages)
            results["local disk"].append(result)

            os.environ["VOLCAST_CACHE"] = str(work / f"cache-{i}")  # an empty working copy
            url = f"s3://bench/run{i}"
            result = measure(pipeline_cmd(",".join(stages), tree, url, "--jobs", "2"), "s3:// (loopback moto)", (tree,))
            from volcast import remote

            mirror = remote.default_mirror(url)
            result["own_seconds"] = own_seconds(mirror / "reports", stages)
            result["bytes_on_store"] = sum(fs.du(f"bench/run{i}", total=False).values())
            results["s3:// (loopback moto)"].append(result)
            shutil.rmtree(mirror, ignore_errors=True)
            fs.rm(f"bench/run{i}", recursive=True)
    finally:
        server.stop()
    summary = {label: _best(runs) for label, runs in results.items()}
    summary["s3:// (loopback moto)"]["bytes_on_store"] = results["s3:// (loopback moto)"][0]["bytes_on_store"]
    return summary


def _train_phase_at_peak(out: Path, result: dict) -> str | None:
    """Which part of training (the report's timed parts, laid back from the end of the process, which
    ends about a second after the stage) the peak of resident memory fell in: approximate."""
    seconds = json.loads((out / "reports" / "train.json").read_text()).get("seconds")
    if not isinstance(seconds, dict):
        return None
    parts = [(k, v) for k, v in seconds.items() if k != "total" and isinstance(v, (int, float))]
    end = result["seconds"] - 1.0
    start = end - sum(v for _, v in parts)
    at = result.get("peak_at_seconds", 0.0)
    if at < start:
        return "before the stage (kernel start, imports)"
    for name, length in parts:
        if at <= start + length:
            return name
        start += length
    return "after the stage"


def _member_rows(member) -> int:
    """Rows of one partition member: a base or legacy delta file, or a ``storage.DeltaPart``."""
    import pyarrow.parquet as pq

    from volcast import storage

    if isinstance(member, storage.DeltaPart):
        return member.rows
    return pq.ParquetFile(member).metadata.num_rows


def dataset_stats(out: Path) -> dict:
    """Per dataset: partitions, rows (mean and largest partition), bytes on disk: what sizes the tasks."""
    from volcast import storage

    stats = {}
    for name in ("raw", "features"):
        groups = storage.partition_groups((out / "data" / name).resolve())
        # A partition's share of the day's shared delta file is a DeltaPart: count its own rows, and the file's
        # bytes once for the whole dataset rather than once per partition that has rows in it.
        rows = sorted(sum(_member_rows(p) for p in files) for files in groups.values())
        paths = {Path(os.fspath(p)) for files in groups.values() for p in files}
        size = sum(p.stat().st_size for p in paths)
        stats[name] = {
            "partitions": len(rows),
            "rows": sum(rows),
            "rows_per_partition_mean": round(sum(rows) / max(1, len(rows))),
            "rows_largest_partition": rows[-1] if rows else 0,
            "bytes": size,
        }
    return stats


def bench_growth(scales: list[int], work: Path, repeat: int) -> dict:
    """The cost of growth on one machine: each stage as its own ``run_pipeline.py --force`` process (peak
    RSS per stage), the scales interleaved stage by stage, each after warming the stage's input files."""
    trees = {k: ensure_tree(k) for k in scales}
    runs: dict[int, dict[str, list]] = {k: {} for k in scales}
    for round_no in range(repeat):
        print(f"growth round {round_no + 1} of {repeat}", flush=True)
        for k in scales:
            shutil.rmtree(work / f"x{k}", ignore_errors=True)
        for stage, reads in (("ingest", None), ("features", "data/raw"), ("train", "data/features")):
            for k in scales:
                out = work / f"x{k}"
                warm_paths = (trees[k],) if reads is None else (out / reads,)
                result = measure(pipeline_cmd(stage, trees[k], out, "--jobs", "2"), f"x{k} {stage}", warm_paths)
                result["own_seconds"] = stage_seconds(out, stage)
                if stage == "train":
                    result["peak_in"] = _train_phase_at_peak(out, result)
                runs[k].setdefault(stage, []).append(result)
    summary = {}
    for k in scales:
        stages = {stage: _best(r) for stage, r in runs[k].items()}
        rows = json.loads((work / f"x{k}" / "reports" / "ingest.json").read_text())
        peak_stage = max(stages, key=lambda st: stages[st]["peak_rss_gib"])
        train = stages.get("train", {})
        train["peak_in"] = min(runs[k]["train"], key=lambda r: r["seconds"]).get("peak_in")
        summary[f"x{k}"] = {
            "datasets": dataset_stats(work / f"x{k}"),
            "rows": rows.get("totals", rows).get("rows_kept"),
            "stages": stages,
            "whole_seconds": round(sum(r["seconds"] for r in stages.values()), 2),
            "peak_rss_gib": stages[peak_stage]["peak_rss_gib"],
            "peak_stage": peak_stage,
        }
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", choices=("dask", "s3", "growth"), default=None)
    parser.add_argument("--growth", default="3,10", help="scales for --only growth (default 3,10)")
    args = parser.parse_args(argv)
    if args.only == "growth":
        return main_growth([int(k) for k in args.growth.split(",")], args.repeat)
    tree = ensure_tree(args.scale)
    report = {
        "scale": args.scale,
        "repeat": args.repeat,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_average_at_start": load1(),
    }
    with tempfile.TemporaryDirectory(prefix="volcast-scale-out-") as tmp:
        work = Path(tmp)
        if args.only in (None, "dask"):
            report["executors"] = bench_executors(tree, work, args.repeat)
        if args.only in (None, "s3"):
            report["s3"] = bench_s3(tree, work, args.repeat)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scale_out_x{args.scale}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Scaling out, x{args.scale} (best of {args.repeat}, {report['started']})",
        "",
        "Every run after reading the source tree once (same warm page cache); load = 1-minute load average",
        "before -> after the run kept; every run's seconds and loads are in the .json.",
        "",
        "| run | seconds (whole process) | stages' own seconds | peak RSS (GiB) | load (1 min) |",
        "|---|---:|---|---:|---|",
    ]
    for part in ("executors", "s3"):
        for label, r in report.get(part, {}).items():
            own = ", ".join(f"{k} {v:.1f}" for k, v in (r.get("own_seconds") or {}).items() if v is not None)
            load = " -> ".join(f"{x:.1f}" for x in r.get("load1") or [])
            lines.append(f"| {label} | {r['seconds']:.1f} | {own} | {r['peak_rss_gib']:.2f} | {load} |")
    if "executors" in report:
        local = report["executors"]["local"]["seconds"]
        for label, r in report["executors"].items():
            if label != "local":
                lines.append(f"\n{label} / local: {r['seconds'] / local:.2f}x (goal <= 1.15x)")
    (RESULTS / f"scale_out_x{args.scale}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main_growth(scales: list[int], repeat: int) -> int:
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="volcast-growth-", dir=ROOT / "benchmarks" / "data") as tmp:
        summary = bench_growth(scales, Path(tmp), repeat)
    name = "scale_out_growth_" + "_".join(f"x{k}" for k in scales)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(
        json.dumps({"started": started, "repeat": repeat, **summary}, indent=2) + "\n"
    )
    lines = [
        f"# The cost of growth on one machine: {', '.join(f'x{k}' for k in scales)} (best of {repeat}, {started})",
        "",
        "Each stage its own `run_pipeline.py --stages S --force --jobs 2` process, the scales interleaved stage",
        "by stage, each after reading its input files once; load = 1-minute load average before -> after.",
        "",
        "| scale | rows | stage | seconds (own) | peak RSS (GiB) | load (1 min) |",
        "|---|---:|---|---:|---:|---|",
    ]
    for key, r in summary.items():
        for stage, st in r["stages"].items():
            load = " -> ".join(f"{x:.1f}" for x in st.get("load1") or [])
            own = f" ({st['own_seconds']:.1f})" if st.get("own_seconds") else ""
            if st.get("peak_in"):
                stage = f"{stage} (peak in {st['peak_in']})"
            lines.append(
                f"| {key} | {r['rows']:,} | {stage} | {st['seconds']:.1f}{own} | {st['peak_rss_gib']:.2f} | {load} |"
            )
        lines.append(
            f"| **{key}** | | **whole run** | **{r['whole_seconds']:.1f}** | **{r['peak_rss_gib']:.2f}** ({r['peak_stage']}) | |"
        )
    lines += [
        "",
        "| scale | dataset | partitions | rows: mean / largest partition | on disk (GiB) |",
        "|---|---|---:|---|---:|",
    ]
    for key, r in summary.items():
        for dataset, d in r["datasets"].items():
            lines.append(
                f"| {key} | {dataset} | {d['partitions']} | {d['rows_per_partition_mean']:,} / "
                f"{d['rows_largest_partition']:,} | {d['bytes'] / 2**30:.2f} |"
            )
    keys = list(summary)
    if len(keys) == 2:
        a, b = summary[keys[0]], summary[keys[1]]
        lines += [
            "",
            f"{keys[1]} / {keys[0]}: rows {b['rows'] / a['rows']:.2f}x, whole run {b['whole_seconds'] / a['whole_seconds']:.2f}x "
            f"(goal <= 3.5x), peak {b['peak_rss_gib']:.2f} GiB in {b['peak_stage']} (goal <= 4 GB = 3.73 GiB).",
        ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
