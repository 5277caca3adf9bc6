"""`run_pipeline.py --output-dir s3://bucket/prefix` against a real S3 endpoint on loopback (moto's
server): a whole run equals a local one, and a run killed during features leaves every reader of the
bucket on the previous version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from s3_helpers import moto_endpoint, new_bucket
from volcast import remote

ROOT = Path(__file__).resolve().parents[1]
DEMO = [
    "--source",
    "demo",
    "--param",
    "ingest.demo_tickers=30",
    "--param",
    "ingest.demo_years=3",
    "--param",
    "train.iterations=40",
    "--param",
    "train.forecast_iterations=40",
    "--no-progress",
    "--jobs",
    "2",
]


def _start(out: str, *extra: str, cache: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if cache is not None:
        env["VOLCAST_CACHE"] = str(cache)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run_pipeline.py"), "--output-dir", out, *DEMO, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
        cwd=ROOT,
    )


def _finish(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout + stderr


def _fs():
    return fsspec.filesystem("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], skip_instance_cache=True)


def _pointer(url: str, rel: str) -> str:
    return _fs().cat_file(f"{url.split('://', 1)[1]}/{rel}").decode().strip()


def _read_remote(url: str, dataset: str) -> pd.DataFrame:
    """A reader with nothing but the bucket: follow the pointer, read that prefix."""
    version = _pointer(url, f"data/{dataset}.current")
    return pd.read_parquet(f"{url}/data/{version}", storage_options={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})


@pytest.fixture(scope="module")
def store():
    with moto_endpoint() as (endpoint, _server):
        yield endpoint


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    _finish(_start(str(out)))
    return out


@pytest.fixture(scope="module")
def s3_run(store, tmp_path_factory):
    url = f"s3://{new_bucket()}/team/volcast"
    cache = tmp_path_factory.mktemp("cache")
    log = _finish(_start(url, cache=cache))
    return url, cache, log


def test_whole_run_to_s3_equals_a_local_run(local_run, s3_run):
    url, cache, log = s3_run
    for name in ("raw", "quarantine", "features"):
        pd.testing.assert_frame_equal(_read_remote(url, name), pd.read_parquet(local_run / "data" / name), obj=name)
    model_id = _pointer(url, "models/LATEST")
    root = url.split("://", 1)[1]
    card = json.loads(_fs().cat_file(f"{root}/models/{model_id}/card.json"))
    local_card = json.loads(
        (local_run / "models" / (local_run / "models" / "LATEST").read_text().strip() / "card.json").read_text()
    )
    assert card["metrics"] == local_card["metrics"]  # same data, same seed: the same model
    reports = {p.rsplit("/", 1)[-1] for p in _fs().ls(f"{root}/reports", refresh=True)}
    assert {"ingest.json", "features.json", "train.json"} <= reports
    manifests = [p for p in _fs().find(f"{root}/runs") if p.endswith("manifest.json")]
    assert len(manifests) == 1
    manifest = json.loads(_fs().cat_file(manifests[0]))
    assert manifest["status"] == "ok" and manifest["output_dir"] == url
    assert url in log and "volcast-test-secret" not in log  # says where, never the credentials
    # The skip state goes up with the outputs (another machine's run starts from it) and the lock is gone.
    copy = cache / "remote" / remote.default_mirror(url).name
    stored_state = json.loads(_fs().cat_file(f"{root}/runs/state.json"))
    assert stored_state == json.loads((copy / "runs" / "state.json").read_text())
    assert set(stored_state) == {"ingest", "features", "train"}
    assert {r["run_id"] for r in stored_state.values()} == {manifest["run_id"]}
    assert not _fs().exists(f"{root}/.volcast.lock")


def test_unchanged_rerun_to_s3_skips_and_publishes_nothing(s3_run):
    url, cache, _ = s3_run
    before = {name: _pointer(url, f"data/{name}.current") for name in ("raw", "features")}
    log = _finish(_start(url, cache=cache))
    assert log.count("skipped") == 3 and "published" not in log
    assert before == {name: _pointer(url, f"data/{name}.current") for name in ("raw", "features")}


def test_a_failed_run_leaves_its_record_on_the_store(s3_run):
    url, cache, _ = s3_run
    root = url.split("://", 1)[1]
    before = {p for p in _fs().ls(f"{root}/runs", refresh=True)}
    state_before = _fs().cat_file(f"{root}/runs/state.json")
    proc = _start(url, "--stages", "features", "--param", "features.window=0", cache=cache)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2 and "window must be a positive number" in stderr
    (new_run,) = {p for p in _fs().ls(f"{root}/runs", refresh=True)} - before
    manifest = json.loads(_fs().cat_file(f"{new_run}/manifest.json"))
    assert manifest["status"] == "failed" and manifest["stages"]["features"]["status"] == "failed"
    assert _fs().exists(f"{new_run}/02_features.ipynb")  # the executed notebook shows where
    assert _fs().cat_file(f"{root}/runs/state.json") == state_before
    assert not _fs().exists(f"{root}/.volcast.lock")


def test_a_run_elsewhere_holding_the_stores_lock_stops_this_one(s3_run):
    """Another machine's run holds the store (its lock object, renewed a moment ago): this run stops with
    one line naming it and publishes nothing; once that lock is gone the run proceeds."""
    url, cache, _ = s3_run
    root = url.split("://", 1)[1]
    other = {"owner": "x" * 32, "host": "build-7", "pid": 4242, "acquired": "2026-11-29T00:00:00+00:00"}
    _fs().pipe_file(f"{root}/.volcast.lock", json.dumps({**other, "ttl_seconds": 300}).encode())
    pointers = {name: _pointer(url, f"data/{name}.current") for name in ("raw", "features")}
    proc = _start(url, "--stages", "features", "--force", cache=cache)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2
    assert "another volcast run holds" in stderr and "build-7" in stderr and "4242" in stderr
    assert "features: running" not in stdout
    assert pointers == {name: _pointer(url, f"data/{name}.current") for name in ("raw", "features")}
    assert json.loads(_fs().cat_file(f"{root}/.volcast.lock"))["host"] == "build-7"  # not ours to remove
    _fs().rm_file(f"{root}/.volcast.lock")
    log = _finish(_start(url, "--stages", "features", cache=cache))
    assert "features: skipped" in log


def test_run_killed_during_features_leaves_the_previous_version(s3_run, tmp_path):
    url, cache, _ = s3_run
    before = {name: _pointer(url, f"data/{name}.current") for name in ("raw", "quarantine", "features")}
    old_features = _read_remote(url, "features")
    proc = _start(url, "--stages", "features", "--param", "features.window=10", cache=cache)
    copy = cache / "remote" / remote.default_mirror(url).name  # the URL's working copy under VOLCAST_CACHE
    deadline = time.monotonic() + 300
    status = None
    while time.monotonic() < deadline and proc.poll() is None:
        manifests = sorted((copy / "runs").glob("*/manifest.json"))
        try:
            status = json.loads(manifests[-1].read_text())["stages"].get("features", {}).get("status")
        except (IndexError, ValueError):
            status = None
        if status == "running":
            break
        time.sleep(0.02)
    assert status == "running", "features never started"
    os.killpg(proc.pid, signal.SIGKILL)  # the runner, its kernel and its workers
    proc.communicate()

    after = {name: _pointer(url, f"data/{name}.current") for name in ("raw", "quarantine", "features")}
    assert after == before
    pd.testing.assert_frame_equal(_read_remote(url, "features"), old_features)

    # Finishing the run moves the pointer to a complete new version with the new window; --keep 1 then
    # leaves on the store the newest run record and those state.json names (the lineage), nothing else.
    root = url.split("://", 1)[1]
    assert json.loads(_fs().cat_file(f"{root}/.volcast.lock"))["pid"] == proc.pid  # the killed run's lock
    log = _finish(_start(url, "--stages", "features", "--param", "features.window=10", "--keep", "1", cache=cache))
    assert "took over the lock" in log and "has exited" in log  # same machine, process gone: no wait
    assert _pointer(url, "data/features.current") != before["features"]
    state = json.loads(_fs().cat_file(f"{root}/runs/state.json"))
    runs = {p.rsplit("/", 1)[-1] for p in _fs().ls(f"{root}/runs", refresh=True)} - {"state.json"}
    local_runs = {p.name for p in (copy / "runs").iterdir() if p.is_dir()}
    assert runs == {r["run_id"] for r in state.values()} == local_runs
    assert len(runs) == 2  # the first run (ingest, train) and this one (features)
    new = _read_remote(url, "features")
    assert len(new) == len(old_features) and not new["vol_moving_avg"].equals(old_features["vol_moving_avg"])
    full_windows = new.groupby("Symbol").cumcount() >= 9
    expected = new.groupby("Symbol")["Volume"].transform(lambda v: v.rolling(10).mean())
    pd.testing.assert_series_equal(new.loc[full_windows, "vol_moving_avg"], expected[full_windows], check_names=False)
