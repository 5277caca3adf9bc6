"""deploy/airflow/volcast_daily.py under Airflow's ``dag.test()``: a daily update, end to end.

Runs only in Airflow's own virtualenv (``.ci/airflow_test`` builds it and runs this file); the main test
suite (tests/, notebooks/) never collects it. On a source that grows by one day
(benchmarks/make_daily_source.py) it checks that:

- one Airflow run executes the three stage notebooks into ``runs/<run_id>/`` and leaves the raw and
  features datasets and a served model;
- ``run_pipeline.py`` with the same options then skips all three stages (same parameters, same state),
  and injects the same parameters as the DAG did;
- after one more day is released, the next Airflow run ingests exactly that day's rows;
- an Airflow run on unchanged data skips every stage; one that finds the output-dir lock held fails
  without running a notebook.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DAG_FILE = HERE.parent / "volcast_daily.py"

# Airflow reads its configuration when first imported: a private home, this folder's DAG, no examples.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="volcast-airflow-home-"))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAG_FILE.parent)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

NOTEBOOKS = ("01_ingest.ipynb", "02_features.ipynb", "03_train.ipynb")
PARAMS = ["train.iterations=30", "train.max_train_rows=20000", "features.window=10"]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dag_module():
    airflow_bin = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow_bin), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    module = _load("volcast_daily", DAG_FILE)
    for task in module.dag.tasks:
        task.retries = 0  # a failing task fails the run now instead of waiting for a retry
    return module


@pytest.fixture(scope="module")
def daily_source(tmp_path_factory):
    from volcast import config

    mds = _load("make_daily_source", config.PROJECT_ROOT / "benchmarks" / "make_daily_source.py")
    src = tmp_path_factory.mktemp("daily") / "src"
    mds.init("demo", src, hold_back=1, demo_tickers=12, demo_years=2, demo_seed=5)
    return mds, src


def _day_rows(src: Path, day: str) -> int:
    """Rows dated ``day`` with every field filled, counted from the source files with pandas."""
    import pandas as pd

    total = 0
    for path in sorted(src.glob("*/*.csv")):
        df = pd.read_csv(io.BytesIO(path.read_bytes()))
        total += int(((df["Date"] == day) & df.notna().all(axis=1)).sum())
    return total


def _run(dag_module, when: dt.datetime, conf: dict):
    dr = dag_module.dag.test(logical_date=when, run_conf=conf)
    run_dir = Path(conf["output_dir"]) / "runs" / dag_module.volcast_run_id(when)
    return dr, run_dir


@pytest.fixture(scope="module")
def first_run(dag_module, daily_source, tmp_path_factory):
    _, src = daily_source
    out = tmp_path_factory.mktemp("airflow-out") / "out"
    conf = {"output_dir": str(out), "source": str(src), "param": PARAMS}
    when = dt.datetime(2026, 11, 26, 23, 30, tzinfo=dt.UTC)
    dr, run_dir = _run(dag_module, when, conf)
    return dr, run_dir, out, conf


def test_one_run_executes_the_three_notebooks_and_leaves_datasets_and_a_model(first_run, daily_source):
    import pandas as pd

    mds, src = daily_source
    dr, run_dir, out, _ = first_run
    assert str(dr.state) == "success"
    for name in NOTEBOOKS:
        nb = json.loads((run_dir / name).read_text())
        assert nb["metadata"]["papermill"]["exception"] is None, name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert [manifest["stages"][s]["status"] for s in ("ingest", "features", "train")] == ["ok", "ok", "ok"]
    raw = pd.read_parquet(out / "data" / "raw")
    held_day = json.loads((src / ".daily" / "state.json").read_text())["held_back"][0]
    assert raw["Date"].max() < held_day  # version 0: the held-back day is not in yet
    features = pd.read_parquet(out / "data" / "features", columns=["Symbol", "Date", "vol_moving_avg"])
    assert len(features) == len(raw) and features["vol_moving_avg"].notna().any()
    model_id = (out / "models" / "LATEST").read_text().strip()
    assert (out / "models" / model_id / "card.json").is_file()


def test_run_pipeline_sees_the_same_parameters_and_skips_every_stage(first_run):
    from volcast import config

    _, run_dir, out, conf = first_run
    cmd = [
        sys.executable,
        str(config.PROJECT_ROOT / "run_pipeline.py"),
        "--source",
        conf["source"],
        "--output-dir",
        str(out),
        "--no-progress",
    ] + [a for p in PARAMS for a in ("--param", p)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("skipped (inputs, parameters and code unchanged") == 3, done.stdout
    cli_runs = sorted(p for p in (out / "runs").iterdir() if p.is_dir() and p != run_dir)
    cli_manifest = json.loads((cli_runs[-1] / "manifest.json").read_text())
    for stage, name in zip(("ingest", "features", "train"), NOTEBOOKS):
        injected = json.loads((run_dir / name).read_text())["metadata"]["papermill"]["parameters"]
        assert injected == cli_manifest["parameters"][stage], stage


def test_next_day_ingests_exactly_that_days_rows(first_run, dag_module, daily_source):
    import pandas as pd

    mds, src = daily_source
    _, _, out, conf = first_run
    before = len(pd.read_parquet(out / "data" / "raw", columns=["Date"]))
    result = mds.release(src, "next")
    dr, run_dir = _run(dag_module, dt.datetime(2026, 11, 27, 23, 30, tzinfo=dt.UTC), conf)
    assert str(dr.state) == "success"
    assert sorted(p.name for p in run_dir.glob("*.ipynb")) == list(NOTEBOOKS)
    raw = pd.read_parquet(out / "data" / "raw", columns=["Date"])
    assert raw["Date"].max() == result["day"]
    assert len(raw) - before == _day_rows(src, result["day"]) > 0


def test_unchanged_data_skips_every_stage(first_run, dag_module):
    _, _, _, conf = first_run
    dr, run_dir = _run(dag_module, dt.datetime(2026, 11, 30, 23, 30, tzinfo=dt.UTC), conf)
    assert str(dr.state) == "success"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [manifest["stages"][s]["status"] for s in ("ingest", "features", "train")] == ["skipped"] * 3
    assert manifest["status"] == "ok"
    assert not list(run_dir.glob("*.ipynb"))


def test_a_held_lock_fails_the_run_without_running_a_notebook(first_run, dag_module):
    import filelock

    _, _, out, conf = first_run
    with filelock.FileLock(str(out / ".volcast.lock")):
        dr, run_dir = _run(dag_module, dt.datetime(2026, 12, 1, 23, 30, tzinfo=dt.UTC), conf)
    assert str(dr.state) == "failed"
    assert not run_dir.exists()
