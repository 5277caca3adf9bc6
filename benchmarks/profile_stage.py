"""Where a stage's seconds go: the run's timeline and a py-spy profile of every process it starts.

    python benchmarks/profile_stage.py features              # on the x3 benchmark tree's output
    python benchmarks/profile_stage.py ingest --scale 1 --top 30
    python benchmarks/profile_stage.py train --no-py-spy     # the timeline only

Runs ``run_pipeline.py --stages STAGE --force`` on ``benchmarks/data/out-x<scale>`` (the tree and the
upstream stages are made first when missing) and prints:

1. the timeline: the whole process, what runs before and after papermill, kernel start-up, each cell
   of the executed notebook (first line of its source) and the kernel shutdown;
2. with py-spy (a dev dependency; it needs ptrace, which root has): CPU seconds per process and the
   functions with the most samples of their own, with file and line. Samples are taken at --rate
   per second in the pipeline, the kernel and its worker processes or threads alike.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import DATA, ensure_tree, pipeline_cmd, stage_seconds  # noqa: E402  (the benchmark's own tree builder)

STAGES = ("ingest", "features", "train")


def timeline(out: Path, stage: str, wall: float) -> list[tuple[str, float]]:
    """(what, seconds) from the newest run's manifest and executed notebook."""
    run_dir = max((p for p in (out / "runs").iterdir() if p.is_dir()), key=lambda p: p.name)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    notebook = json.loads(next(run_dir.glob("*.ipynb")).read_text())
    when = dt.datetime.fromisoformat
    meta = notebook["metadata"]["papermill"]
    cells = [c for c in notebook["cells"] if c["metadata"].get("papermill", {}).get("start_time")]
    rows = [
        ("whole process (wall)", wall),
        ("outside papermill: interpreter, imports, fingerprints, manifest", wall - meta["duration"]),
        (
            "kernel start-up",
            (when(cells[0]["metadata"]["papermill"]["start_time"]) - when(meta["start_time"])).total_seconds(),
        ),
    ]
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]).strip().splitlines()
        first = next((line for line in source if not line.startswith("#")), source[0] if source else "")
        rows.append((f"cell: {first[:70]}", cell["metadata"]["papermill"]["duration"] or 0.0))
    rows.append(
        (
            "kernel shutdown",
            (when(meta["end_time"]) - when(cells[-1]["metadata"]["papermill"]["end_time"])).total_seconds(),
        )
    )
    own = stage_seconds(out, stage)
    if own is not None:
        rows.append((f"  of which {stage}.run's own report", own))
    if manifest["stages"][stage]["status"] != "ok":
        raise SystemExit(f"the {stage} stage failed: {manifest['stages'][stage]}")
    return rows


# Frames where a thread waits (a kernel's sockets and heartbeat, a pool's queues): py-spy samples them
# as active because they block in native code; they are counted apart.
WAITING = (
    "select (selectors.py",
    "Condition.wait",
    "Event.wait",
    "device (zmq",
    "_watch_pipe_fd",
    "ParentPollerUnix.run",
    ".poll (",
    "sleep (",
    "_recv_bytes",
    ".accept (",
)


def profile(raw: Path, rate: int, top: int) -> None:
    per_process: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        if any(mark in frames[-1] for mark in WAITING):
            waiting += n
            continue
        # --subprocesses: the stack starts with the root process, then the child it ran in, if any.
        process = [f for f in frames if f.startswith("process ")][-1:] or ["(process)"]
        per_process[process[0].split(":", 1)[-1].strip('"')[:90]] += n
        own[frames[-1]] += n
    print(f"\nCPU seconds per process (py-spy, {rate} samples/s; {waiting / rate:.1f} s of waiting threads left out):")
    for process, n in per_process.most_common():
        print(f"  {n / rate:7.2f}  {process}")
    print("\nfunctions with the most samples of their own (native code is counted in its Python caller):")
    for frame, n in own.most_common(top):
        print(f"  {n / rate:7.2f}  {frame}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-py-spy", action="store_true", help="print the timeline only")
    args = parser.parse_args(argv)

    tree = ensure_tree(args.scale)
    out = DATA / f"out-x{args.scale}"
    for upstream in STAGES[: STAGES.index(args.stage)]:
        if not (out / "reports" / f"{upstream}.json").exists():
            print(f"running the {upstream} stage first ...", flush=True)
            subprocess.run(pipeline_cmd(upstream, tree, out), check=True, cwd=ROOT, capture_output=True)

    cmd = pipeline_cmd(args.stage, tree, out)
    py_spy = None if args.no_py_spy else shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        if py_spy and Path(py_spy).exists():
            cmd = [
                py_spy,
                "record",
                "--subprocesses",
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--output",
                str(raw),
                "--",
                *cmd,
            ]
        elif not args.no_py_spy:
            print("py-spy not found (pip install py-spy); timeline only", file=sys.stderr)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        print(
            f"{args.stage} at x{args.scale}: timeline (seconds){' under py-spy, which slows it a little' if raw.exists() else ''}"
        )
        for what, seconds in timeline(out, args.stage, wall):
            print(f"  {seconds:7.2f}  {what}")
        if raw.exists():
            profile(raw, args.rate, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
