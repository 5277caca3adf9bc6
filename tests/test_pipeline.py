"""The runner: CLI parsing, fingerprints, locking, and end-to-end runs of the real notebooks."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pandas as pd
import pytest

from volcast import config, pipeline
from volcast.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None, timeout=900):
    return subprocess.run(
        [sys.executable, str(ROOT / "run_pipeline.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


# ----------------------------------------------------------------------------- pure parts


def test_param_values_are_typed():
    assert pipeline.parse_param_value("10") == 10
    assert pipeline.parse_param_value("0.25") == 0.25
    assert pipeline.parse_param_value("30D") == "30D"
    assert pipeline.parse_param_value("true") is True
    assert pipeline.parse_param_value("'x'") == "x"


def test_params_are_checked_against_the_notebooks():
    assert pipeline.parse_params(["features.window=10", "features.window=12"]) == {"features": {"window": 12}}
    for bad in ["window=10", "feature.window=10", "features.windw=10", "features.output_dir=/tmp"]:
        with pytest.raises(UserError):
            pipeline.parse_params([bad])


def test_stages_keep_dag_order_and_reject_unknown():
    assert pipeline.parse_stages("train,ingest") == ["ingest", "train"]
    assert pipeline.parse_stages(None) == list(config.STAGES)
    with pytest.raises(UserError):
        pipeline.parse_stages("ingest,predict")


def test_run_ids_sort_in_start_order_within_a_second_and_when_the_clock_steps_back(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    noon = dt.datetime(2026, 11, 27, 12, 0, 0)
    made = []
    # three runs in one second, then one with the clock stepped back an hour
    for now in [
        noon,
        noon + dt.timedelta(milliseconds=300),
        noon + dt.timedelta(milliseconds=300),
        noon - dt.timedelta(hours=1),
    ]:
        run_id = pipeline.new_run_id(runs, now=now)
        (runs / run_id).mkdir()
        made.append(run_id)
    assert sorted(made) == made and len(set(made)) == 4
    assert made[0].startswith("20261127T120000.000000-")
    assert made[3].startswith("20261127T120000.300002-"), "moved just past the newest run"
    # an id of the older whole-second form still sorts before a new id of the same second
    (runs / "20261127T130000-abcdef").mkdir()
    assert pipeline.new_run_id(runs, now=dt.datetime(2026, 11, 27, 13, 0, 0)) > "20261127T130000-abcdef"


def test_fingerprint_changes_with_content_not_with_time(tmp_path):
    (tmp_path / "a.csv").write_text("x")
    first = pipeline.fingerprint_path(tmp_path)
    assert pipeline.fingerprint_path(tmp_path) == first
    (tmp_path / "a.csv").write_text("xy")
    assert pipeline.fingerprint_path(tmp_path) != first
    assert pipeline.fingerprint_path(tmp_path / "missing") is None


def test_dag_order_follows_what_each_stage_reads():
    made = {"source"}
    for stage in pipeline.DAG:
        assert set(stage.inputs) <= made, f"{stage.name} reads what no earlier stage writes"
        made |= set(stage.outputs)
        for path in stage.code_paths:  # the code fingerprint covers real files (a renamed module fails here)
            assert path.is_file() or any(path.glob("*.py")), path


def test_one_fingerprint_for_file_trees():
    from volcast import storage

    assert pipeline.fingerprint_path is storage.fingerprint_path


def test_hide_shared_makes_the_tests_see_a_fresh_clone(monkeypatch):
    import conftest

    monkeypatch.setenv("VOLCAST_HIDE_SHARED", "1")
    assert conftest.shared_data() is None and conftest.shared_data("stock-market-sample.zip") is None
    monkeypatch.setenv("VOLCAST_HIDE_SHARED", "0")
    present = conftest.SHARED_DATA.is_dir()
    assert conftest.shared_data() == (conftest.SHARED_DATA if present else None)
    monkeypatch.delenv("VOLCAST_HIDE_SHARED")
    assert (conftest.shared_data("stock-market-sample.zip") is not None) == (conftest.SAMPLE_ZIP.exists())


def test_readme_diagram_is_generated_from_the_dag():
    readme = (ROOT / "README.md").read_text()
    assert pipeline.mermaid() in readme, "README's DAG is stale: paste `python run_pipeline.py dag`"


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, sample_source):
    out = tmp_path_factory.mktemp("run")
    proc = run_cli("--source", sample_source, "--output-dir", out, "--no-progress")
    return out, proc


def _manifests(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/manifest.json"))]


def _latest_manifest(out: Path, proc) -> dict:
    """The manifest of the run ``proc`` made, which must also be the newest by name (``ls runs | tail -1``)."""
    (run_id,) = re.findall(r"^volcast run (\S+) -> ", proc.stdout, flags=re.M)
    latest = _manifests(out)[-1]
    assert latest["run_id"] == run_id, "run ids must sort in the order the runs started"
    return latest


def test_full_run_leaves_notebooks_manifest_and_outputs(full_run):
    out, proc = full_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    (manifest,) = _manifests(out)
    run_dir = out / "runs" / manifest["run_id"]
    for stage in config.STAGES:
        assert (run_dir / config.STAGE_NOTEBOOKS[stage]).exists()
        assert manifest["stages"][stage]["status"] == "ok"
        assert manifest["stages"][stage]["seconds"] > 0
    assert manifest["status"] == "ok"
    assert manifest["parameters"]["ingest"]["output_dir"] == str(out.resolve())
    assert manifest["input_fingerprints"]["ingest"]["source"]
    assert manifest["library_versions"]["pandas"] == pd.__version__
    assert "git_commit" in manifest
    raw = pd.read_parquet(out / "data" / "raw")
    assert list(raw.columns) == list(config.RAW_COLUMNS)
    features = pd.read_parquet(out / "data" / "features")
    assert len(features) == len(raw)
    model_id = (out / "models" / "LATEST").read_text().strip()
    assert (out / "models" / model_id / "card.json").exists()
    for stage in config.STAGES:
        assert f"{stage}: ok" in proc.stdout


def test_unchanged_rerun_skips_every_stage(full_run):
    out, first = full_run
    assert first.returncode == 0
    proc = run_cli("--output-dir", out, "--source", _source_of(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    latest = _latest_manifest(out, proc)
    assert {s["status"] for s in latest["stages"].values()} == {"skipped"}
    assert proc.stdout.count("skipped") == 3


def test_changed_parameter_reruns_that_stage_and_downstream(full_run):
    out, first = full_run
    assert first.returncode == 0
    proc = run_cli(
        "--output-dir",
        out,
        "--source",
        _source_of(out),
        "--no-progress",
        "--param",
        "features.window=10",
        "--stages",
        "ingest,features",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = _latest_manifest(out, proc)["stages"]
    assert stages["ingest"]["status"] == "skipped"
    assert stages["features"]["status"] == "ok"
    assert json.loads((out / "reports" / "features.json").read_text())["window"] == 10


def test_force_reruns_every_stage_in_full(full_run):
    out, first = full_run
    assert first.returncode == 0
    proc = run_cli(
        "--output-dir", out, "--source", _source_of(out), "--no-progress", "--force", "--stages", "ingest,features"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stages = _latest_manifest(out, proc)["stages"]
    assert stages["ingest"]["status"] == stages["features"]["status"] == "ok"
    ingest_report = json.loads((out / "reports" / "ingest.json").read_text())
    features_report = json.loads((out / "reports" / "features.json").read_text())
    assert not ingest_report["incremental"], "--force re-reads every file"
    assert features_report["partitions_reused"] == 0
    assert features_report["partitions_recomputed"] == features_report["partitions"]


def _source_of(out: Path) -> str:
    return _manifests(out)[0]["source"]


def test_failing_stage_exits_nonzero_and_names_its_notebook(full_run):
    out, first = full_run
    assert first.returncode == 0
    proc = run_cli("--output-dir", out, "--stages", "train", "--param", "train.model=no_such_model", "--no-progress")
    assert proc.returncode != 0
    assert "train" in proc.stderr
    notebook = Path(proc.stderr.strip().splitlines()[-1].split(": ", 1)[1])
    assert notebook.name == "03_train.ipynb" and notebook.exists()
    assert "no_such_model" in notebook.read_text()
    assert _latest_manifest(out, proc)["status"] == "failed"
    assert len(proc.stderr.strip().splitlines()) <= 3


def test_second_run_on_same_output_dir_refuses(tmp_path):
    lock = filelock.FileLock(str(config.Layout.at(tmp_path).lock_file))
    with lock:
        proc = run_cli("--output-dir", tmp_path, "--source", "demo", "--stages", "ingest")
    assert proc.returncode == 2
    assert "another volcast run" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_bad_source_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("--output-dir", tmp_path, "--source", tmp_path / "nope.zip")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "nope.zip" in proc.stderr


def test_papermill_import_skips_the_slow_iri_checker_and_notebooks_still_validate():
    """run_pipeline.py pays for importing papermill once per process: without jsonschema's optional IRI
    checker (rfc3987_syntax compiles ~35 grammars at import), nothing else changes."""
    code = (
        "import sys\n"
        "from volcast import pipeline\n"
        "pipeline._import_papermill()\n"
        "assert sys.modules.get('rfc3987_syntax') is None, 'rfc3987_syntax was imported'\n"
        "import nbformat\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "nbformat.validate(nb)\n"
        "nb.cells[0]['cell_type'] = 'no-such-type'\n"
        "try:\n"
        "    nbformat.validate(nb)\n"
        "except nbformat.ValidationError:\n"
        "    print('invalid caught')\n"
    )
    # A fresh interpreter: the test process may have imported jsonschema already.
    done = subprocess.run(
        [sys.executable, "-c", code, str(config.NOTEBOOKS_DIR / "02_features.ipynb")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "invalid caught"


@pytest.mark.parametrize("stage", ["ingest", "features"])
def test_stage_kernel_starts_with_its_imports_done_but_no_names_bound(tmp_path, stage):
    """The kernel started ahead of papermill has pandas, pyplot and the stage module imported (so the
    notebook's imports are instant) and nothing else in the notebook's namespace; for ingest, the
    worker server is already running beside it."""
    import psutil

    kernel = pipeline.ensure_kernel(config.Layout.at(tmp_path))
    km = pipeline._start_kernel(kernel, pipeline.STAGES[stage])
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        code = (
            "import sys, os; print(sorted(n for n in globals() if not n.startswith('_') and n not in "
            "('In', 'Out', 'exit', 'quit', 'open', 'get_ipython', 'sys', 'os')), "
            f"[m in sys.modules for m in ('pandas', 'matplotlib.pyplot', 'volcast.{stage}')], "
            "os.getcwd(), os.getpid())"
        )
        printed = []
        kc.execute_interactive(code, timeout=60, output_hook=lambda msg: printed.append(msg["content"].get("text", "")))
        words = "".join(printed).split()
        assert words[:-1] == ["[]", "[True,", "True,", "True]", str(config.NOTEBOOKS_DIR)]
        servers = [p for p in psutil.Process(int(words[-1])).children() if "forkserver" in " ".join(p.cmdline())]
        assert len(servers) == (1 if stage == "ingest" else 0)
    finally:
        km.shut_down()
    assert not km.is_alive()


def _left_over(before: set[int]) -> list[str]:
    """Kernels and what they started (ingest's worker server) not in ``before``: any still there after 10 s."""
    import psutil

    deadline = time.monotonic() + 10
    while (
        new := [
            p
            for p in psutil.Process().children(recursive=True)
            if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [" ".join(p.cmdline())[:120] for p in new]


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. this process's own forkserver


def test_no_kernel_outlives_its_stage_ok_or_failed(tmp_path, monkeypatch):
    """Each stage's kernel is shut down when its notebook ends, whether the stage passed or failed; so is a
    kernel started ahead for a stage that then never runs (the run failed before it)."""
    before = _children()
    demo = {"ingest": {"demo_tickers": 12, "demo_years": 2}}
    pipeline.run_pipeline(
        tmp_path, source="demo", stages=["ingest", "features"], params=demo, jobs=2, say=lambda _: None, progress=False
    )
    assert _left_over(before) == []
    with pytest.raises(pipeline.StageFailed):
        pipeline.run_pipeline(
            tmp_path, stages=["train"], params={"train": {"model": "no_such_model"}}, say=lambda _: None, progress=False
        )
    assert _left_over(before) == []
    # features fails in a cell after its own (a ticker it does not have, to chart), once train's kernel was
    # started ahead for it: that kernel goes too
    started = []
    real = pipeline._Stopper.start_ahead
    monkeypatch.setattr(pipeline._Stopper, "start_ahead", lambda self, k, s: (started.append(s.name), real(self, k, s)))
    with pytest.raises(pipeline.StageFailed):
        pipeline.run_pipeline(
            tmp_path,
            stages=["features", "train"],
            params={"features": {"symbol": "NO-SUCH-TICKER"}},
            force=True,
            say=lambda _: None,
            progress=False,
        )
    manifest = json.loads(max((tmp_path / "runs").glob("*/manifest.json")).read_text())
    assert manifest["stages"]["features"]["status"] == "failed" and "train" not in manifest["stages"]
    assert started == ["train"]
    assert _left_over(before) == []


def test_next_stage_kernel_starts_during_the_stage_before_and_the_stages_add_up_to_the_run(tmp_path):
    """features' kernel is started while ingest runs; its seconds count from ingest's end, so the stages'
    seconds still add up to (at most) the run's. A kernel started ahead for a stage that is then skipped (its
    inputs unchanged) is shut down."""
    from volcast import ingest

    before = _children()
    src = ingest.generate_demo_market(tmp_path / "market", n_tickers=6, years=1, seed=11)
    out = tmp_path / "out"

    def run() -> dict:
        return pipeline.run_pipeline(
            out, source=str(src), stages=["ingest", "features"], jobs=2, say=lambda _: None, progress=False
        )

    manifest = run()
    ingest_stage, features = manifest["stages"]["ingest"], manifest["stages"]["features"]
    assert ingest_stage["kernel_started_ahead"] is None  # the first stage starts its own
    assert 0 < features["kernel_started_ahead"] < ingest_stage["seconds"]
    assert ingest_stage["seconds"] + features["seconds"] <= manifest["seconds"]
    assert _left_over(before) == []
    # A file touched, not changed: ingest runs (its source's stamp changed), finds the same rows, and features
    # (its input unchanged) is skipped.
    touched = sorted((src / "stocks").glob("*.csv"))[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    manifest = run()
    assert manifest["stages"]["ingest"]["status"] == "ok"
    assert manifest["stages"]["features"]["status"] == "skipped"
    assert _left_over(before) == []


def test_a_kernel_that_fails_to_start_ahead_fails_nothing(tmp_path, monkeypatch):
    """The next stage's kernel, started ahead, fails to start: the stage running then is not failed by it, and
    the next stage starts its own kernel as it begins."""
    from volcast import execute

    real = execute._start_stage_kernel

    def failing_ahead(km, stage, params=None):
        if params is None:  # started ahead (a stage starting its own passes its parameters)
            raise RuntimeError("no kernel")
        return real(km, stage, params)

    monkeypatch.setattr(execute, "_start_stage_kernel", failing_ahead)
    before = _children()
    demo = {"ingest": {"demo_tickers": 5, "demo_years": 1}}
    manifest = pipeline.run_pipeline(
        tmp_path, source="demo", stages=["ingest", "features"], params=demo, jobs=2, say=lambda _: None, progress=False
    )
    assert [s["status"] for s in manifest["stages"].values()] == ["ok", "ok"]
    assert manifest["stages"]["features"]["kernel_started_ahead"] is None
    assert _left_over(before) == []


def test_ingest_worker_server_starts_beside_the_kernel_only_when_every_file_is_read(tmp_path):
    from volcast.execute import _reads_every_file

    params = {"output_dir": str(tmp_path), "jobs": 2}
    assert _reads_every_file(params)  # no raw dataset yet
    pipeline.run_pipeline(
        tmp_path,
        source="demo",
        stages=["ingest"],
        params={"ingest": {"demo_tickers": 5, "demo_years": 1}},
        say=lambda _: None,
        progress=False,
    )
    assert not _reads_every_file(params)  # incremental: started by ingest if a task needs it
    assert _reads_every_file({**params, "incremental": False})  # --force
    assert not _reads_every_file({**params, "incremental": False, "jobs": 1})  # no worker processes
    assert not _reads_every_file({**params, "incremental": False, "executor": "dask"})


def test_a_py_twin_edited_and_not_synced_stops_the_run_before_it_starts(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for path in config.NOTEBOOKS_DIR.iterdir():
        if path.suffix in (".ipynb", ".py", ".toml"):
            shutil.copy2(path, folder / path.name)
    twin = folder / "02_features.py"
    twin.write_text(twin.read_text() + '\n# %%\nprint("an edit")\n')
    later = (folder / "02_features.ipynb").stat().st_mtime + 10
    os.utime(twin, (later, later))
    monkeypatch.setattr(config, "NOTEBOOKS_DIR", folder)
    out = tmp_path / "out"

    with pytest.raises(UserError, match="sync-notebooks"):
        pipeline.run_pipeline(out, stages=["features"], say=lambda _: None, progress=False)
    assert not (out / "runs").exists()

    pipeline.sync_notebooks(["02_features"], notebooks_dir=folder)
    pipeline.notebooks.check_pair(folder / "02_features.ipynb")  # in step now: no error
    for name in ("01_ingest", "03_train"):  # untouched pairs pass, whatever their times
        os.utime(folder / f"{name}.py", (later, later))
        pipeline.notebooks.check_pair(folder / f"{name}.ipynb")
