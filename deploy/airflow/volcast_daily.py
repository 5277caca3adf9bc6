"""volcast's daily run as an Airflow DAG: ingest >> features >> train, one PapermillOperator per stage notebook.

Put this file (or a symlink to it) in Airflow's dags folder, in an environment where volcast is installed
(``pip install -e /path/to/volcast``) beside ``apache-airflow`` and ``apache-airflow-providers-papermill``.

Each task runs its stage's notebook with papermill, exactly as ``run_pipeline.py`` does:

- the parameters are built by volcast's own function (``volcast.pipeline._stage_params``), from the same
  inputs as the command line: output dir, source, ``STAGE.NAME=VALUE`` overrides (checked against the
  notebook's ``parameters`` cell by ``volcast.pipeline.parse_params``), jobs, force;
- the executed notebook goes to ``DIR/runs/<run_id>/<notebook>.ipynb`` with a ``manifest.json`` beside it;
  ``<run_id>`` is the Airflow run's logical date in volcast's run-id form plus ``-airflow``, so the three
  tasks of one Airflow run share one run directory and runs sort by time with ``run_pipeline.py``'s;
- each task holds volcast's output-dir lock (``DIR/.volcast.lock``) while it runs: a ``run_pipeline.py``
  on the same directory at that moment makes the task fail with a clear message (Airflow retries it);
- a stage whose inputs, parameters and code are unchanged since its last successful run (by either
  Airflow or ``run_pipeline.py``: both keep ``DIR/runs/state.json``) is skipped, as on the command line,
  and the task succeeds without running its notebook.

Configuration: each Airflow run's params (the trigger form, ``airflow dags trigger --conf``, or
``dag.test(run_conf=...)``), whose defaults come from these environment variables when the DAG is parsed:
``VOLCAST_OUTPUT_DIR`` (default: volcast's ``outputs/``), ``VOLCAST_SOURCE`` (a Kaggle-layout folder or
.zip, ``kaggle`` or ``demo``; default: as ``run_pipeline.py`` chooses), ``VOLCAST_PARAMS``
(whitespace-separated ``STAGE.NAME=VALUE``), ``VOLCAST_JOBS``, ``VOLCAST_SCHEDULE`` (cron, default
``30 18 * * 1-5``: weekdays 18:30 New York time, after the 16:00 close) and ``VOLCAST_TIMEZONE``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shlex
import sys
import time
from typing import Any

from airflow.providers.papermill.operators.papermill import PapermillOperator
from airflow.sdk import DAG, CronTriggerTimetable, Param

log = logging.getLogger(__name__)

DAG_ID = "volcast_daily"
STAGES = ("ingest", "features", "train")
RUN_ID_SUFFIX = "-airflow"
_RUN_STAMP = "%Y%m%dT%H%M%S.%f"  # volcast.pipeline's run-id stamp


class VolcastLockBusy(RuntimeError):
    """Another volcast run holds the output directory."""


def volcast_run_id(logical_date: dt.datetime) -> str:
    """The volcast run id of an Airflow run: its logical date as local time, volcast's stamp, ``-airflow``."""
    return logical_date.astimezone().strftime(_RUN_STAMP) + RUN_ID_SUFFIX


def stage_parameters(
    stage: str,
    output_dir: str | None,
    source: str | None = None,
    jobs: int | None = None,
    param: list[str] | tuple[str, ...] = (),
    force: bool = False,
) -> dict[str, Any]:
    """The parameters ``run_pipeline.py`` would inject into ``stage``'s notebook for the same options.

    ``volcast.pipeline._stage_params`` builds them, so the DAG and the command line cannot drift; if a
    later volcast renames it, the same rule is applied here (and a warning says so).
    """
    from volcast import pipeline
    from volcast.config import Layout

    layout = Layout.at(output_dir)
    overrides = pipeline.parse_params(list(param))
    if stage == "ingest":
        source = pipeline.resolve_source(source, say=log.info)
    build = getattr(pipeline, "_stage_params", None)
    if build is not None:
        return build(stage, layout, source, jobs, overrides, force)
    log.warning("volcast.pipeline._stage_params is gone: building %s's parameters with the DAG's own copy", stage)
    declared = pipeline.notebook_parameters(stage)
    params: dict[str, Any] = {"output_dir": str(layout.output_dir)}
    if force and "incremental" in declared:
        params["incremental"] = False
    if stage == "ingest" and source is not None:
        params["source"] = source
    if jobs is not None and "jobs" in declared:
        params["jobs"] = jobs
    params.update(overrides.get(stage, {}))
    return params


class VolcastStageOperator(PapermillOperator):
    """One volcast stage: its notebook through papermill, under the output-dir lock, with volcast's bookkeeping."""

    def __init__(self, *, stage: str, lock_timeout: float = 0, **kwargs) -> None:
        from volcast import pipeline

        notebook = pipeline.STAGES[stage].notebook_path
        super().__init__(
            task_id=stage, input_nb=str(notebook), output_nb=None, log_output=True, do_xcom_push=False, **kwargs
        )
        self.stage = stage
        self.lock_timeout = lock_timeout

    def execute(self, context) -> None:
        import filelock

        from volcast import pipeline, storage
        from volcast.config import Layout

        conf = context["params"]
        layout = Layout.at(conf.get("output_dir") or None)
        logical = context.get("logical_date") or context["dag_run"].run_after
        run_id = volcast_run_id(logical)
        layout.output_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(layout.lock_file))
        try:
            lock.acquire(timeout=self.lock_timeout)
        except filelock.Timeout:
            raise VolcastLockBusy(
                f"another volcast run is using {layout.output_dir}; this task fails and Airflow retries it"
            ) from None
        try:
            self._run_locked(context, layout, run_id, conf, pipeline, storage)
        finally:
            lock.release()

    def _run_locked(self, context, layout, run_id, conf, pipeline, storage) -> None:
        stage = pipeline.STAGES[self.stage]
        params = stage_parameters(
            self.stage,
            str(layout.output_dir),
            conf.get("source") or None,
            conf.get("jobs"),
            conf.get("param") or (),
            bool(conf.get("force")),
        )
        run_dir = layout.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = run_dir / "manifest.json"
        manifest = storage.read_json(manifest_path, default=None) or {
            "run_id": run_id,
            "status": "running",
            "started": _now(),
            "ended": None,
            "seconds": None,
            "output_dir": str(layout.output_dir),
            "source": None,
            "stages_requested": list(STAGES),
            "force": bool(conf.get("force")),
            "parameters": {},
            "input_fingerprints": {},
            "code_fingerprints": {},
            "stages": {},
            "git_commit": pipeline.git_commit(),
            "library_versions": pipeline.library_versions(),
            "python": sys.executable,
            "host": os.uname().nodename,
            "orchestrator": {"airflow_dag": context["dag"].dag_id, "airflow_run_id": context["run_id"]},
        }
        manifest["status"] = "running"  # again, when a failed run is retried
        if self.stage == "ingest":
            manifest["source"] = params.get("source")
        state_path = layout.runs_dir / "state.json"
        state = storage.read_json(state_path, default={}) or {}
        # the same up-to-date record as run_pipeline's (volcast.pipeline._run_locked), so either may skip
        run_only = getattr(pipeline, "RUN_ONLY_PARAMS", ("output_dir", "incremental"))
        fingerprint = {
            "inputs": pipeline.input_fingerprints(stage, layout, params),
            "parameters": {k: v for k, v in params.items() if k not in run_only},
            "code": pipeline.code_fingerprint(stage),
        }
        manifest["parameters"][self.stage] = params
        manifest["input_fingerprints"][self.stage] = fingerprint["inputs"]
        manifest["code_fingerprints"][self.stage] = fingerprint["code"]
        record = state.get(self.stage)
        reason = None if conf.get("force") else pipeline.up_to_date_reason(stage, layout, record, fingerprint)
        t0 = time.perf_counter()
        if reason:
            log.info("%s: skipped (%s)", self.stage, reason)
            manifest["stages"][self.stage] = {
                "name": self.stage,
                "status": "skipped",
                "seconds": 0.0,
                "notebook": None,
                "reason": reason,
                "error": None,
            }
            self._finish(manifest, manifest_path, storage)
            return
        output = run_dir / stage.notebook
        self.input_nb, self.output_nb, self.parameters = str(stage.notebook_path), str(output), params
        self.kernel_name = os.environ.get("VOLCAST_KERNEL") or pipeline.ensure_kernel(layout)
        try:
            super().execute(context)
        except BaseException as exc:
            manifest["stages"][self.stage] = {
                "name": self.stage,
                "status": "failed",
                "seconds": round(time.perf_counter() - t0, 3),
                "notebook": str(output),
                "reason": "cell-error",
                "error": f"{type(exc).__name__}: {exc}"[:500],
            }
            manifest["status"] = "failed"
            self._finish(manifest, manifest_path, storage, final=True)
            raise
        manifest["stages"][self.stage] = {
            "name": self.stage,
            "status": "ok",
            "seconds": round(time.perf_counter() - t0, 3),
            "notebook": str(output),
            "reason": None,
            "error": None,
        }
        state[self.stage] = {
            "run_id": run_id,
            "fingerprint": fingerprint,
            "outputs": pipeline.output_fingerprints(stage, layout),
            "finished": _now(),
        }
        storage.atomic_write_json(state_path, state)
        self._finish(manifest, manifest_path, storage)

    def _finish(self, manifest, path, storage, final: bool = False) -> None:
        if final or self.stage == STAGES[-1]:
            if manifest["status"] == "running":
                manifest["status"] = "ok"
            manifest["ended"] = _now()
            started = dt.datetime.fromisoformat(manifest["started"])
            manifest["seconds"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 3)
        storage.atomic_write_json(path, manifest)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _env_jobs() -> int | None:
    value = os.environ.get("VOLCAST_JOBS", "").strip()
    return int(value) if value else None


with DAG(
    dag_id=DAG_ID,
    description="volcast daily update: ingest >> features >> train (papermill notebooks)",
    schedule=CronTriggerTimetable(
        os.environ.get("VOLCAST_SCHEDULE", "30 18 * * 1-5"),
        timezone=os.environ.get("VOLCAST_TIMEZONE", "America/New_York"),
    ),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # a day's run finishes before the next starts; the lock would refuse it anyway
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=10)},
    params={
        "output_dir": Param(
            os.environ.get("VOLCAST_OUTPUT_DIR", ""),
            type="string",
            description="volcast --output-dir (empty: volcast's outputs/)",
        ),
        "source": Param(
            os.environ.get("VOLCAST_SOURCE", ""),
            type="string",
            description="volcast --source: Kaggle-layout folder or .zip, kaggle, demo (empty: volcast's choice)",
        ),
        "param": Param(
            shlex.split(os.environ.get("VOLCAST_PARAMS", "")),
            type="array",
            description="volcast --param STAGE.NAME=VALUE, one per item",
        ),
        "jobs": Param(_env_jobs(), type=["null", "integer"], description="volcast --jobs"),
        "force": Param(False, type="boolean", description="volcast --force"),
    },
    tags=["volcast"],
) as dag:
    tasks = [VolcastStageOperator(stage=name) for name in STAGES]
    tasks[0] >> tasks[1] >> tasks[2]
