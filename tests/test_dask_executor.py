"""The dask executor: ingest's and features' partition tasks on a real ``distributed.LocalCluster`` with
worker processes give the same datasets as the local executor; the default never imports dask."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from volcast import executor, features, ingest
from volcast.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DEMO = {"source": "demo", "demo_tickers": 40, "demo_years": 3, "demo_seed": 11}


def _datasets(out: Path) -> dict[str, pd.DataFrame]:
    data = out / "data"
    return {
        "raw": pd.read_parquet(data / "raw"),
        "quarantine": pd.read_parquet(data / "quarantine"),
        "features": pd.read_parquet(data / "features"),
        "latest": pd.read_parquet(data / "features" / "_latest.parquet"),
    }


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local")
    ingest.run(out, jobs=2, **DEMO)
    features.run(out, jobs=2)
    return out


@pytest.fixture(scope="module")
def cluster():
    import distributed

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster


def test_default_executor_never_imports_dask(tmp_path):
    """Nothing changes for a user of neither option: no dask, and no object-storage client either."""
    code = (
        "import sys, json\n"
        "from volcast import ingest, features, pipeline\n"
        f"out = {str(tmp_path)!r}\n"
        "r = ingest.run(out, source='demo', demo_tickers=12, demo_years=2, jobs=2)\n"
        "f = features.run(out, jobs=2)\n"
        "heavy = ('dask', 'distributed', 's3fs', 'aiobotocore')\n"
        "print(json.dumps({'modules': sorted(m for m in sys.modules if m.split('.')[0] in heavy),"
        " 'executors': [r['executor'], f['executor']], 'params': pipeline.RunCluster(None, None, 2).params()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != executor.SCHEDULER_ENV}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"modules": [], "executors": ["local", "local"], "params": {}}


def test_stages_on_a_dask_cluster_equal_the_local_run(tmp_path, local_run, cluster):
    import distributed

    with (
        distributed.Client(cluster, set_as_default=False) as client,
        distributed.get_task_stream(client=client) as stream,
    ):
        report = ingest.run(tmp_path, jobs=2, executor="dask", scheduler=cluster.scheduler_address, **DEMO)
        feats = features.run(tmp_path, jobs=2, executor="dask", scheduler=cluster.scheduler_address)
    assert report["executor"] == feats["executor"] == "dask"
    ours, theirs = _datasets(tmp_path), _datasets(local_run)
    for name in ours:
        pd.testing.assert_frame_equal(ours[name], theirs[name], check_exact=True, obj=name)
    assert len(ours["raw"]) > 10_000 and ours["raw"]["Symbol"].nunique() == 40
    # The work really went to the cluster's worker processes: one ingest task and one features task
    # per partition file, run by both workers (none in this process).
    parts = sorted(p.name for p in (tmp_path / "data" / "raw").glob("part-*.parquet"))
    keys = [t["key"] for t in stream.data]
    assert sum(k.startswith("ingest-") for k in keys) == len(parts)
    assert sum(k.startswith("features-") for k in keys) == len(parts)
    assert len({t["worker"] for t in stream.data}) == 2
    # Reports agree on every count.
    local_report = json.loads((local_run / "reports" / "ingest.json").read_text())
    assert report["totals"] == local_report["totals"]


def test_incremental_run_on_dask_equals_a_full_local_one(tmp_path, local_run, cluster):
    """An unchanged re-run on the cluster carries every partition over; the result is still the local one."""
    address = cluster.scheduler_address
    ingest.run(tmp_path, jobs=2, executor="dask", scheduler=address, **DEMO)
    features.run(tmp_path, jobs=2, executor="dask", scheduler=address)
    again = features.run(tmp_path, jobs=2, executor="dask", scheduler=address)
    assert again["partitions_recomputed"] == 0 and again["partitions_reused"] == again["partitions"] > 1
    pd.testing.assert_frame_equal(_datasets(tmp_path)["features"], _datasets(local_run)["features"])


def test_executor_choice_and_environment(monkeypatch):
    monkeypatch.delenv(executor.SCHEDULER_ENV, raising=False)
    assert executor.resolve(None, None) == ("local", "")
    assert executor.resolve("dask", None) == ("dask", "")  # a LocalCluster
    assert executor.resolve(None, "tcp://10.0.0.1:8786") == ("dask", "tcp://10.0.0.1:8786")
    monkeypatch.setenv(executor.SCHEDULER_ENV, "tcp://sched:8786")
    assert executor.resolve(None, None) == ("dask", "tcp://sched:8786")
    assert executor.resolve("dask", "tcp://other:1") == ("dask", "tcp://other:1")  # the option wins
    assert executor.resolve("local", None) == ("local", "")  # local overrides the environment
    with pytest.raises(UserError, match="needs --executor dask"):
        executor.resolve("local", "tcp://sched:8786")
    with pytest.raises(UserError, match="choose local or dask"):
        executor.resolve("spark", None)


def test_unreachable_scheduler_is_one_clear_error(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(executor, "CONNECT_TIMEOUT", "2s")
    with pytest.raises(UserError, match=f"cannot reach the dask scheduler at tcp://127.0.0.1:{port}"):
        ingest.run(tmp_path, jobs=2, executor="dask", scheduler=f"tcp://127.0.0.1:{port}", **DEMO)
    assert not (tmp_path / "data" / "raw").exists()  # nothing published


@pytest.mark.slow
def test_pipeline_with_executor_dask_starts_a_local_cluster(tmp_path, local_run):
    """`run_pipeline.py --executor dask` alone: the run starts a LocalCluster, hands its address to both
    stages (manifest), and the datasets equal the local executor's."""
    env = {k: v for k, v in os.environ.items() if k != executor.SCHEDULER_ENV}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_pipeline.py"),
            "--output-dir",
            str(tmp_path),
            "--stages",
            "ingest,features",
            "--source",
            "demo",
            "--param",
            "ingest.demo_tickers=40",
            "--param",
            "ingest.demo_years=3",
            "--param",
            "ingest.demo_seed=11",
            "--executor",
            "dask",
            "--jobs",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(next((tmp_path / "runs").glob("*/manifest.json")).read_text())
    for stage in ("ingest", "features"):
        assert manifest["parameters"][stage]["executor"] == "dask"
        assert manifest["parameters"][stage]["scheduler"].startswith("tcp://127.0.0.1:")
    assert manifest["parameters"]["ingest"]["scheduler"] == manifest["parameters"]["features"]["scheduler"]
    assert json.loads((tmp_path / "reports" / "features.json").read_text())["executor"] == "dask"
    ours, theirs = _datasets(tmp_path), _datasets(local_run)
    for name in ours:
        pd.testing.assert_frame_equal(ours[name], theirs[name], check_exact=True, obj=name)
