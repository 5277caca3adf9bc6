"""A run killed with SIGKILL at any moment leaves the previous complete version (or nothing) where
readers look, and the next run completes and equals a clean run."""
from __future__ import annotations

import json
import os
import shutil
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


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run_pipeline.py"), "--output-dir", str(out), *DEMO, *extra],
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


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    """An output dir holding a complete earlier run on another market (demo seed 1)."""
    out = tmp_path_factory.mktemp("previous")
    proc = _start(out, "--param", "ingest.demo_seed=1")
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    return out


@pytest.mark.parametrize("fraction", [0.1, 0.35, 0.6, 0.85])
def test_kill_then_rerun_equals_clean_run(tmp_path, clean_run, previous_run, fraction):
    clean, seconds = clean_run
    clean_raw, clean_features = _read(clean / "data" / "raw"), _read(clean / "data" / "features")
    old_raw, old_features = _read(previous_run / "data" / "raw"), _read(previous_run / "data" / "features")
    shutil.copytree(previous_run, tmp_path, symlinks=True, dirs_exist_ok=True)

    proc = _start(tmp_path)
    time.sleep(seconds * fraction)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner, its kernel and its workers
    proc.communicate()

    # Whatever the moment, readers see the previous complete dataset or the new complete one.
    for name, new, old in (("raw", clean_raw, old_raw), ("features", clean_features, old_features)):
        seen = _read(tmp_path / "data" / name)
        assert seen is not None and (seen.equals(new) or seen.equals(old)), \
            f"partial {name} dataset after kill at {fraction:.0%}"
    latest = tmp_path / "models" / "LATEST"
    if latest.exists():
        assert (tmp_path / "models" / latest.read_text().strip() / "card.json").exists()

    rerun = _start(tmp_path)
    stdout, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr[-3000:]
    pd.testing.assert_frame_equal(_read(tmp_path / "data" / "raw"), clean_raw)
    pd.testing.assert_frame_equal(_read(tmp_path / "data" / "features"), clean_features)
    assert _train_metrics(tmp_path) == _train_metrics(clean)
