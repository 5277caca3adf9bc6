"""Helpers of the dashboard tests: the kernels Voilà runs under ``serve()``, and a tiny output dir whose
ticker and security name are HTML (issue 14, finding 6).

The hostile output: a generated market in the Kaggle layout with one stock file renamed to a
script-carrying ticker and a meta row giving it a hostile Security Name; then the production
ingest -> features -> train, in-process.
"""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import psutil

from volcast import features, ingest, train

HOSTILE_SYMBOL = "<img src=x onerror=alert(document.domain)>"
HOSTILE_NAME = "<svg onload=alert('name')>Evil & Co \"Class A\""
HOSTILE_MARKERS = ("<img", "<svg")  # none may reach the page as markup (escaped, they read "&lt;img")


def build_hostile_output(tmp: Path, train_model: bool = True) -> Path:
    source = ingest.generate_demo_market(tmp / "source", n_tickers=5, years=2, seed=21)
    victim = sorted((source / "stocks").glob("*.csv"))[0]
    victim.rename(victim.with_name(HOSTILE_SYMBOL + ".csv"))
    meta = source / "symbols_valid_meta.csv"
    with meta.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    row = [""] * len(header)
    row[header.index("Symbol")] = row[header.index("NASDAQ Symbol")] = HOSTILE_SYMBOL
    row[header.index("Security Name")] = HOSTILE_NAME
    row[header.index("ETF")] = "N"
    with meta.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows + [row])
    out = tmp / "out"
    ingest.run(out, source=str(source), jobs=1)
    features.run(out, jobs=1)
    if train_model:
        train.run(out, seed=3, iterations=30, max_train_rows=20_000, jobs=1, progress=False)
    return out


def kernels_of(proc) -> list[psutil.Process]:
    """The ipykernel processes under ``serve()`` (Voila's kernels), and no one else's."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def kernel_id(proc: psutil.Process) -> str:
    """A kernel's id, from its connection file (``kernel-<id>.json``) on its command line."""
    return re.search(r"kernel-([0-9a-f-]+)\.json", " ".join(proc.cmdline())).group(1)


def wait_for_kernels(served, count: int, timeout: float = 90) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while len(kernels := kernels_of(served.proc)) != count and time.monotonic() < deadline:
        time.sleep(0.25)
    return kernels
