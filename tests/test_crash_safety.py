"""A run killed with SIGKILL at any moment leaves the previous complete version (or nothing) where
readers look, and the next run completes and equals a clean run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["--source", "demo", "--param", "ingest.demo_tickers=40", "--param", "ingest.demo_years=4",
        "--param", "train.iterations=60", "--no-progress"]


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run_pipeline.py"), "--output-dir", str(out), *DEMO],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _train_metrics(out: Path) -> dict:
    return json.loads((out / "reports" / "train.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    t0 = time.monotonic()
    proc = _start(out)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    return out, time.monotonic() - t0


@pytest.mark.parametrize("fraction", [0.1, 0.35, 0.6, 0.85])
def test_kill_then_rerun_equals_clean_run(tmp_path, clean_run, fraction):
    clean, seconds = clean_run
    clean_raw, clean_features = _read(clean / "data" / "raw"), _read(clean / "data" / "features")

    proc = _start(tmp_path)
    time.sleep(seconds * fraction)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner, its kernel and its workers
    proc.communicate()

    # Whatever the moment, readers see a complete dataset or none.
    for name, expected in (("raw", clean_raw), ("features", clean_features)):
        seen = _read(tmp_path / "data" / name)
        assert seen is None or seen.equals(expected), f"partial {name} dataset after kill at {fraction:.0%}"
    latest = tmp_path / "models" / "LATEST"
    if latest.exists():
        assert (tmp_path / "models" / latest.read_text().strip() / "card.json").exists()

    rerun = _start(tmp_path)
    stdout, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr[-3000:]
    pd.testing.assert_frame_equal(_read(tmp_path / "data" / "raw"), clean_raw)
    pd.testing.assert_frame_equal(_read(tmp_path / "data" / "features"), clean_features)
    assert _train_metrics(tmp_path) == _train_metrics(clean)
