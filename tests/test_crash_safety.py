"""A run killed with SIGKILL at any moment leaves the previous complete version (or nothing) where
readers look, and the next run completes and equals a clean run. Ctrl-C or SIGTERM stop a run at once:
exit 130 / 143, nothing of the interrupted stage published, the lock released, no process left."""

from __future__ import annotations

import contextlib
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

from volcast import config, storage

ROOT = Path(__file__).resolve().parents[1]
DEMO = [
    "--source",
    "demo",
    "--param",
    "ingest.demo_tickers=40",
    "--param",
    "ingest.demo_years=4",
    "--param",
    "train.iterations=60",
    "--no-progress",
]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run_pipeline.py"), "--output-dir", str(out), *DEMO, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


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
        assert seen is not None and (seen.equals(new) or seen.equals(old)), (
            f"partial {name} dataset after kill at {fraction:.0%}"
        )
    latest = tmp_path / "models" / "LATEST"
    if latest.exists():
        assert (tmp_path / "models" / latest.read_text().strip() / "card.json").exists()

    rerun = _start(tmp_path)
    stdout, stderr = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, stderr[-3000:]
    pd.testing.assert_frame_equal(_read(tmp_path / "data" / "raw"), clean_raw)
    pd.testing.assert_frame_equal(_read(tmp_path / "data" / "features"), clean_features)
    assert _train_metrics(tmp_path) == _train_metrics(clean)


# ----------------------------------------------------------------------------- Ctrl-C and SIGTERM

BIGGER = ["--param", "ingest.demo_seed=2", "--param", "ingest.demo_tickers=400", "--param", "ingest.demo_years=10"]


def _stage_status(out: Path, stage: str, earlier: set[str]) -> str | None:
    """The stage's status in the manifest of the run under test, the one run not in ``earlier`` (the
    runner writes "running" as the stage starts)."""
    manifests = [p for p in (out / "runs").glob("*/manifest.json") if p.parent.name not in earlier]
    try:
        return json.loads(manifests[0].read_text())["stages"].get(stage, {}).get("status")
    except (IndexError, ValueError):  # not written yet, or being replaced
        return None


def _kernels(proc: subprocess.Popen) -> list:
    import psutil

    def command(p):
        try:
            return " ".join(p.cmdline())
        except psutil.Error:  # gone, or a zombie (the previous stage's kernel, not reaped yet)
            return ""

    return [p for p in psutil.Process(proc.pid).children(recursive=True) if "ipykernel" in command(p)]


def _in_cell(out: Path, stage: str, earlier: set[str]) -> bool:
    """True while the run's executed notebook shows the stage's ``<stage>.run(...)`` cell running
    (papermill saves the notebook as each cell starts and ends)."""
    for notebook in (out / "runs").glob(f"*/{config.STAGE_NOTEBOOKS[stage]}"):
        if notebook.parent.name in earlier:
            continue
        try:
            cells = json.loads(notebook.read_text())["cells"]
        except (OSError, ValueError):
            continue  # being written
        for cell in cells:
            if f"{stage}.run(" in "".join(cell["source"]):
                return cell.get("metadata", {}).get("papermill", {}).get("status") == "running"
    return False


def _kill_all(proc: subprocess.Popen) -> None:
    """Cleanup after a failed test: the runner and everything it started (kernels have their own session)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def _published(out: Path) -> dict:
    """What readers see (the dataset versions, the served model) and the runner's record of each stage."""
    return {
        "raw": storage.current_version(out / "data" / "raw"),
        "features": storage.current_version(out / "data" / "features"),
        "LATEST": (out / "models" / "LATEST").read_text(),
        "state": json.loads((out / "runs" / "state.json").read_text()),
    }


# ingest and train: in the middle of the stage's own work (ingest reads 4,000 ticker-years, train fits 20,000
# trees); features is quick, so it is caught as it starts (its kernel starting, papermill reading the notebook).
@pytest.mark.parametrize(
    "stage, signum, in_cell, later",
    [
        ("ingest", signal.SIGINT, True, 0.0),
        ("features", signal.SIGINT, False, 0.0),
        ("train", signal.SIGINT, True, 1.5),
        ("train", signal.SIGTERM, True, 1.5),
    ],
)
def test_a_signal_during_a_stage_stops_the_run_and_publishes_nothing_of_that_stage(
    tmp_path, previous_run, stage, signum, in_cell, later
):
    import filelock
    import psutil

    shutil.copytree(previous_run, tmp_path, symlinks=True, dirs_exist_ok=True)
    before = _published(tmp_path)
    earlier = {p.name for p in (tmp_path / "runs").iterdir()}
    # another market (so every stage runs), and a training long enough to be caught in the middle
    proc = _start(tmp_path, *BIGGER, "--param", "train.iterations=20000")
    deadline = time.monotonic() + 600
    try:
        while (
            (status := _stage_status(tmp_path, stage, earlier)) != "running"
            or not _kernels(proc)
            or (in_cell and not _in_cell(tmp_path, stage, earlier))
        ):
            assert proc.poll() is None, proc.communicate()
            assert status in (None, "running"), f"{stage} ended ({status}) before it was caught"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(later)  # train: well into fitting
        started = psutil.Process(proc.pid).children(recursive=True)  # the stage's kernel and its workers

        os.kill(proc.pid, signum)  # the runner only, as a terminal's Ctrl-C or `kill` would
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            _kill_all(proc)

    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    after = _published(tmp_path)
    (run_id,) = [line.split()[2] for line in stdout.splitlines() if line.startswith("volcast run ")]
    manifest = json.loads((tmp_path / "runs" / run_id / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["stages"][stage]["status"] == "interrupted"
    # the interrupted stage and the later ones published and recorded nothing; the earlier ones completed
    outputs = {"ingest": "raw", "features": "features", "train": "LATEST"}
    position = config.STAGES.index(stage)
    for name in config.STAGES[position:]:
        assert after[outputs[name]] == before[outputs[name]], name
        assert after["state"][name] == before["state"][name], name
    for name in config.STAGES[:position]:
        assert after[outputs[name]] != before[outputs[name]] and after["state"][name]["run_id"] == run_id
    # the lock is free and nothing the run started is left
    filelock.FileLock(str(config.Layout.at(tmp_path).lock_file)).acquire(timeout=0)
    gone_by = time.monotonic() + 10
    while (
        alive := [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    ) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert alive == []


# ----------------------------------------------------------------------------- a signal at the worst moments
# The runner runs under a wrapper that sends it the signal at one exact point, through the same handler a
# terminal's Ctrl-C reaches; volcast itself is unchanged.

_WRAPPER = """
import os, runpy, signal, sys, threading
{patch}
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Right after the fork of the stage's kernel, inside Popen: jupyter_client does not know the process yet.
_AT_KERNEL_FORK = """
import subprocess
_execute_child = subprocess.Popen._execute_child
def _at_fork(self, args, *rest, **kwargs):
    _execute_child(self, args, *rest, **kwargs)
    if any("ipykernel_launcher" in str(arg) for arg in args):
        with open(os.environ["KERNEL_PID_FILE"], "w") as f:
            f.write(str(self.pid))
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
subprocess.Popen._execute_child = _at_fork
"""

# As the first cell starts, in code that swallows KeyboardInterrupt (as a careless library could).
_SWALLOWED_AT_FIRST_CELL = """
import time
import nbclient.client
_execute_cell = nbclient.client.NotebookClient.execute_cell
def _swallowing(self, *args, **kwargs):
    if not getattr(self, "_signalled", False):
        self._signalled = True
        try:
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            print("swallowed", file=sys.stderr, flush=True)
    return _execute_cell(self, *args, **kwargs)
nbclient.client.NotebookClient.execute_cell = _swallowing
"""


def _run_wrapped(out: Path, patch: str, logs: Path) -> tuple[subprocess.Popen, str, str]:
    """Run the features stage alone (``--force``) under the wrapper; output to files, so that a process left
    holding the runner's stdout cannot hide when the runner itself exited."""
    with open(logs / "stdout", "w") as stdout, open(logs / "stderr", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRAPPER.format(patch=patch), str(ROOT / "run_pipeline.py")]
            + ["--output-dir", str(out), "--stages", "features", "--force", "--no-progress"],
            stdout=stdout,
            stderr=stderr,
            text=True,
            start_new_session=True,
            env={**os.environ, "KERNEL_PID_FILE": str(logs / "kernel.pid")},
        )
        try:
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                _kill_all(proc)
    return proc, (logs / "stdout").read_text(), (logs / "stderr").read_text()


def _assert_stopped_cleanly(out: Path, before: dict, proc, stdout: str, stderr: str) -> None:
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr[-2000:]
    (run_id,) = [line.split()[2] for line in stdout.splitlines() if line.startswith("volcast run ")]
    manifest = json.loads((out / "runs" / run_id / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["stages"]["features"]["status"] == "interrupted"
    after = _published(out)
    assert after["features"] == before["features"] and after["state"] == before["state"]
    import filelock

    filelock.FileLock(str(config.Layout.at(out).lock_file)).acquire(timeout=0)


def test_a_signal_as_the_stage_kernel_is_forked_leaves_no_kernel_behind(tmp_path, previous_run):
    import psutil

    out, logs = tmp_path / "out", tmp_path / "logs"
    shutil.copytree(previous_run, out, symlinks=True)
    logs.mkdir()
    before = _published(out)
    proc, stdout, stderr = _run_wrapped(out, _AT_KERNEL_FORK, logs)
    kernel = int((logs / "kernel.pid").read_text())
    try:
        # Gone (killed and reaped by the runner) when the runner has exited, not left to die on its own.
        assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(kernel).kill()
    _assert_stopped_cleanly(out, before, proc, stdout, stderr)


def test_a_swallowed_interrupt_still_stops_the_run(tmp_path, previous_run):
    out, logs = tmp_path / "out", tmp_path / "logs"
    shutil.copytree(previous_run, out, symlinks=True)
    logs.mkdir()
    before = _published(out)
    proc, stdout, stderr = _run_wrapped(out, _SWALLOWED_AT_FIRST_CELL, logs)
    assert "swallowed" in stderr  # the first raise was lost, as intended
    _assert_stopped_cleanly(out, before, proc, stdout, stderr)
