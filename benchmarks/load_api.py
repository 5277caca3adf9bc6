"""Load test of the JSON API: GET /predict and GET /forecast with wrk on loopback, as `run_pipeline.py serve` runs it.

    python benchmarks/load_api.py [--output-dir outputs] [--duration 10] [--connections 32]

Starts the API worker processes of `volcast.serve` (one per core, SO_REUSEPORT) on a free port
against the model in OUTPUT_DIR/models/LATEST, then runs wrk twice:

* fixed  - the same URL every time (the issue's goal: >= 3,000 req/s, p99 <= 10 ms, 32 connections);
           after the first request every answer comes from the per-model answer cache;
* varied - a random (vol_moving_avg, adj_close_rolling_med) per request from a Lua script, so almost
           every request is a cache miss and goes to the model (batched per event-loop turn);
* forecast - GET /forecast?symbol= with a random ticker of the model's latest-row table per request
           (every ticker's forecast is computed when the model loads; a request is a look-up).

Prints req/s, p50/p99 and non-2xx counts and writes benchmarks/results/api_load.md.
Needs `wrk` (`apt-get install -y wrk`). Loopback only; the server binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from volcast.config import DEFAULT_OUTPUT_DIR, Layout, resolve_jobs
from volcast.serve import start_api_workers, stop_processes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "api_load.md"
GOAL_RPS, GOAL_P99_MS = 3000, 10.0

VARIED_LUA = """
-- One random, valid feature pair per request: defeats the server's answer cache.
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("seed", counter)
end
init = function(args)
  math.randomseed(42 + seed * 7919)
end
request = function()
  local vol = math.random(1000, 200000000)
  local price = math.random(50, 200000) / 100
  return wrk.format("GET", "/predict?vol_moving_avg=" .. vol .. "&adj_close_rolling_med=" .. price)
end
"""


FORECAST_LUA = """
-- One random ticker of the model per request.
local symbols = {%s}
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("seed", counter)
end
init = function(args)
  math.randomseed(7 + seed * 7919)
end
request = function()
  return wrk.format("GET", "/forecast?symbol=" .. symbols[math.random(1, #symbols)])
end
"""


def forecast_symbols(layout) -> list[str]:
    """The tickers with a forecast in the model LATEST names."""
    from volcast.train import latest_model_dir
    from volcast.train.forecast import load_bundle

    return load_bundle(latest_model_dir(layout.output_dir)).symbols


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(text: str) -> dict:
    """wrk --latency output -> numbers (req/s, latency percentiles in ms, non-2xx, socket errors)."""
    out: dict = {"raw": text}
    out["rps"] = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    out["requests"] = int(re.search(r"(\d+) requests in", text).group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        out[f"p{pct}_ms"] = _ms(*m.groups()) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(map(int, m.groups())) if m else 0
    return out


def median_run(runs: list[dict]) -> dict:
    """The run with the median p99 (its req/s and other numbers come with it)."""
    return sorted(runs, key=lambda r: r["p99_ms"])[len(runs) // 2]


def meets_goal(r: dict) -> bool:
    return r["rps"] >= GOAL_RPS and r["p99_ms"] <= GOAL_P99_MS and r["non_2xx"] == 0 and r["socket_errors"] == 0


def run_wrk(url: str, duration: float, connections: int, threads: int, script: str | None = None) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return parse_wrk(proc.stdout)


def wait_healthy(base: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as resp:
                return json.load(resp)
        except Exception as err:  # 503 (no model yet) or not listening yet
            last = err
            time.sleep(0.2)
    raise SystemExit(f"the API did not become healthy at {base}/health: {last}")


def machine_note() -> str:
    load = os.getloadavg()
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    loads = "/".join(f"{x:.2f}" for x in load)
    return f"{resolve_jobs(0)} cores ({cpu}), Python {platform.python_version()}, load average {loads}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR), help="an output dir with a trained model")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario (default 10)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1 leaves the cores to the server)")
    parser.add_argument("--workers", type=int, default=0, help="API worker processes (0 = one per core)")
    parser.add_argument("--scenarios", default="fixed,varied,forecast")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario; the median run (by p99) is reported")
    parser.add_argument("--results", default=str(RESULTS), help="markdown file to write ('' = do not write)")
    args = parser.parse_args(argv)

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    layout = Layout.at(args.output_dir)
    if not layout.latest_file.exists():
        raise SystemExit(
            f"no model in {layout.models_dir}: run `python run_pipeline.py --output-dir {args.output_dir}` first"
        )
    workers = resolve_jobs(args.workers)
    procs, port = start_api_workers(layout.output_dir, "127.0.0.1", 0, workers)
    base = f"http://127.0.0.1:{port}"
    results = {}
    try:
        health = wait_healthy(base)
        fixed_url = f"{base}/predict?vol_moving_avg=12345&adj_close_rolling_med=25"
        with urllib.request.urlopen(fixed_url, timeout=5) as resp:
            sample = json.load(resp)
        before = machine_note()
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
            lua.write(VARIED_LUA)
        symbols = forecast_symbols(layout) if "forecast" in args.scenarios.split(",") else []
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as flua:
            flua.write(FORECAST_LUA % ", ".join(json.dumps(s) for s in symbols))
        try:
            for name in args.scenarios.split(","):
                script = {"varied": lua.name, "forecast": flua.name}.get(name)
                run_wrk(fixed_url, min(2.0, args.duration), args.connections, args.threads, script)  # warm-up
                runs = []
                for i in range(args.repeat):
                    r = run_wrk(fixed_url, args.duration, args.connections, args.threads, script)
                    r["load"] = os.getloadavg()[0]
                    runs.append(r)
                    print(
                        f"{name:>6} run {i + 1}: {r['rps']:,.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                        f"p99 {r['p99_ms']:.2f} ms  "
                        f"non-2xx {r['non_2xx']}  socket errors {r['socket_errors']}  (load average {r['load']:.2f})",
                        flush=True,
                    )
                results[name] = runs
        finally:
            os.unlink(lua.name)
            os.unlink(flua.name)
        after = machine_note()
    finally:
        stop_processes(procs)

    medians = {name: median_run(runs) for name, runs in results.items()}
    for name, r in medians.items():
        print(f"{name:>6} median run: {r['rps']:,.0f} req/s, p99 {r['p99_ms']:.2f} ms")
    ok = {name: meets_goal(r) for name, r in medians.items()}
    print(
        f"goal (>= {GOAL_RPS:,} req/s, p99 <= {GOAL_P99_MS:g} ms, no non-2xx) on the median run: "
        + ", ".join(f"{name} {'met' if met else 'NOT met'}" for name, met in ok.items())
    )
    if args.results:
        write_results(Path(args.results), args, workers, health, sample, results, before, after, ok, len(symbols))
        print(f"wrote {args.results}")
    return 0


def write_results(path, args, workers, health, sample, results, before, after, ok, n_symbols=0) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    lines = [
        "# API load test (GET /predict, GET /forecast)",
        "",
        f"Written by `benchmarks/load_api.py` on {dt.datetime.now().isoformat(timespec='seconds')} "
        f"(commit {commit or '?'}).",
        "",
        f"- Server: `volcast.serve` API, {workers} worker process(es) sharing the port with SO_REUSEPORT, tornado "
        "HTTPServer without the RequestHandler layer.",
        f"- Model: `{health.get('model_id')}`; sample answer for (12345, 25): `{json.dumps(sample)}`.",
        f"- Load: `wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency` on loopback, "
        f"on the same machine as the server, {args.repeat} run(s) per scenario after a warm-up.",
        f"- Machine before: {before}; after: {after}. **The machine is shared with other jobs** (a load average "
        "above the core count means other processes wanted the CPUs too), so numbers vary from run to run, "
        "and tail latency most of all.",
        f"- wrk: {wrk_version[0] if wrk_version else '?'}",
        "",
        "| scenario | run | req/s | p50 ms | p90 ms | p99 ms | non-2xx | socket errors | load avg (1 min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        for i, r in enumerate(runs, 1):
            lines.append(
                f"| {name} | {i} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['non_2xx']} | {r['socket_errors']} | {r['load']:.2f} |"
            )
    lines += [
        "",
        "`fixed`: one URL (answers come from the per-model cache after the first). `varied`: a random valid pair "
        "per request (cache misses; the model is called once per event-loop turn for all pending rows). "
        f"`forecast`: GET /forecast?symbol= with a random one of the model's {n_symbols:,} tickers per request.",
        "",
        f"Goal (>= {GOAL_RPS:,} req/s, p99 <= {GOAL_P99_MS:g} ms, no non-2xx), judged on each scenario's median run "
        "(by p99): " + ", ".join(f"{name} **{'met' if met else 'not met'}**" for name, met in ok.items()) + ".",
        "",
    ]
    for name, runs in results.items():
        r = median_run(runs)
        lines += [
            f"<details><summary>wrk output: {name}, median run</summary>",
            "",
            "```",
            r["raw"].rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    from volcast.storage import atomic_write_text

    atomic_write_text(path, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
