"""Finding 5 of issue 14: no ingest worker outlives its run, whatever killed the runner.

A real ``run_pipeline.py --stages ingest --jobs 2`` on a source slow enough to parse (files of duplicate
dates: every row is quarantined with its reason) is killed once its two workers are busy; then every
process it had started must be gone (psutil), the workers included, which are grandchildren of the
stage's kernel through the forkserver."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADER = b"Date,Open,High,Low,Close,Adj Close,Volume\n"


def slow_source(root: Path, files: int = 24, rows: int = 40_000) -> Path:
    """Files in different partitions (first two letters), each of ``rows`` lines with the same date."""
    body = HEADER + b"2020-01-02,1.5,2,1,1.5,1.5,500\n" * rows
    stocks = root / "src" / "stocks"
    stocks.mkdir(parents=True)
    for i in range(files):
        (stocks / f"{chr(65 + i // 26)}{chr(65 + i % 26)}X.csv").write_bytes(body)
    return root / "src"


def workers_of(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The forkserver and the processes forked from it (they share its command line)."""
    out = []
    for p in procs:
        try:
            if "forkserver" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_worker_outlives_a_killed_runner(tmp_path, sig):
    src = slow_source(tmp_path)
    runner = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "run_pipeline.py"),
            "--output-dir",
            str(tmp_path / "out"),
            "--source",
            str(src),
            "--stages",
            "ingest",
            "--jobs",
            "2",
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and runner.poll() is None:
            try:
                started = psutil.Process(runner.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                break
            if len(workers_of(started)) >= 3:  # the forkserver and two workers
                break
            time.sleep(0.2)
        assert runner.poll() is None and len(workers_of(started)) >= 3, "the workers never started"
        servers = {p.pid for p in workers_of(started)}
        assert sum(p.ppid() in servers for p in workers_of(started)) >= 2  # forked by the forkserver
        runner.send_signal(sig)
        runner.wait(timeout=60)
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, f"still running after the runner was killed: {alive}"
    finally:
        for p in started:  # never leave a process behind, whatever the outcome
            try:
                p.kill()
            except psutil.Error:
                pass
        if runner.poll() is None:
            runner.kill()
            runner.wait()
