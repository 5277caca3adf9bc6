"""volcast's daily run as an Airflow DAG: ingest >> features >> train, one PapermillOperator per stage notebook.

Put this file (or a symlink to it) in Airflow's dags folder, in an environment where volcast is installed
(``pip install -e /path/to/volcast``) beside ``apache-airflow`` and ``apache-airflow-providers-papermill``.

Each task runs its stage's notebook with papermill, exactly as ``run_pipeline.py`` does:

- the parameters are built by volcast's own function (``volcast.pipeline.stage_parameters``), from the
  same inputs as the command line: output dir, source, ``STAGE.NAME=VALUE`` overrides (checked against the
  notebook's ``parameters`` cell by ``volcast.pipeline.parse_params``), jobs, force;
- the executed notebook goes to ``DIR/runs/<run_id>/<notebook>.ipynb`` with a ``manifest.json`` beside it;
  ``<run_id>`` is the Airflow run's logical date in volcast's run-id form plus ``-airflow``, so the three
  tasks of one Airflow run share one run directory and runs sort by time with ``run_pipeline.py``'s;
- each task holds volcast's output-dir lock (``DIR/.volcast.lock``) while it runs: a ``run_pipeline.py``
  on the same directory at that moment makes the task fail with a clear message (Airflow retries it);
- the skip and the bookkeeping are volcast's own (``volcast.pipeline.run_stage``, which ``run_pipeline.py``
  runs too): a stage whose inputs, parameters and code are unchanged since its last successful run (by
  either Airflow or ``run_pipeline.py``: both keep ``DIR/runs/state.json``) is skipped, and the task
  succeeds without running its notebook.

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
    """The parameters ``run_pipeline.py`` would inject into ``stage``'s notebook for the same options."""
    from volcast import pipeline
    from volcast.config import Layout

    overrides = pipeline.parse_params(list(param))
    if stage == "ingest":
        source = pipeline.resolve_source(source, say=log.info)
    return pipeline.stage_parameters(stage, Layout.at(output_dir), source, jobs, overrides, force)


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
        force = bool(conf.get("force"))
        params = stage_parameters(
            self.stage,
            str(layout.output_dir),
            conf.get("source") or None,
            conf.get("jobs"),
            conf.get("param") or (),
            force,
        )
        run_dir = layout.runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = run_dir / "manifest.json"
        manifest = storage.read_json(manifest_path, default=None) or pipeline.new_manifest(
            run_id, str(layout.output_dir), None, list(STAGES), force
        )
        manifest["orchestrator"] = {"airflow_dag": context["dag"].dag_id, "airflow_run_id": context["run_id"]}
        manifest["status"] = "running"  # again, when a failed run is retried
        if self.stage == "ingest":
            manifest["source"] = params.get("source")
        stage = pipeline.STAGES[self.stage]
        try:
            pipeline.run_stage(
                stage,
                layout,
                run_dir,
                params,
                manifest,
                self._papermill(context, stage, run_dir, layout),
                force,
                log.info,
            )
        except BaseException:
            manifest["status"] = "failed"
            self._finish(manifest, manifest_path, storage, final=True)
            raise
        self._finish(manifest, manifest_path, storage)

    def _papermill(self, context, stage, run_dir, layout):
        """``execute`` for ``run_stage``: this operator's PapermillOperator run of the stage's notebook."""
        from volcast import pipeline
        from volcast.execute import StageResult

        def execute(params: dict[str, Any]) -> StageResult:
            output = str(run_dir / stage.notebook)
            self.input_nb, self.output_nb, self.parameters = str(stage.notebook_path), output, params
            self.kernel_name = os.environ.get("VOLCAST_KERNEL") or pipeline.ensure_kernel(layout)
            t0 = time.perf_counter()
            try:
                super(VolcastStageOperator, self).execute(context)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
                return StageResult(
                    stage.name, "failed", round(time.perf_counter() - t0, 3), output, "cell-error", error
                )
            return StageResult(stage.name, "ok", round(time.perf_counter() - t0, 3), output)

        return execute

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
