"""The DAG, declared once, and its execution: each stage is a notebook that papermill runs.

Every run leaves ``DIR/runs/<run_id>/`` with the executed notebooks (the log of the run) and
``manifest.json`` (parameters, input fingerprints, code versions, timings, status). A stage is
skipped when its inputs, parameters and code are unchanged since its last successful run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from . import config, notebooks, storage
from .config import Layout
from .errors import Interrupted, UserError
from .executor import RunCluster

# Kept importable from here: notebooks, tests and benchmarks use these names.
from .notebooks import KERNEL_NAME, ensure_kernel, refresh_notebooks, sync_notebooks  # noqa: F401
from .notebooks import import_papermill as _import_papermill
from .storage import fingerprint_path

LIBRARY_DIR = Path(__file__).resolve().parent
TRACKED_PACKAGES = (
    "volcast", "numpy", "pandas", "pyarrow", "bottleneck", "scikit-learn", "catboost",
    "papermill", "nbclient", "ipykernel", "voila", "ipywidgets", "tornado", "kaggle",
)
COMMON_CODE = ("config", "storage", "errors", "__init__")


def _start_kernel(kernel: str, stage: Stage):
    """Start the stage's kernel now, importing what its notebook imports first, and return its manager.

    Started before the runner imports papermill and reads the notebook, the kernel's start-up and
    imports overlap them; for ingest, its worker server starts first, beside the kernel.
    """
    km = notebooks.kernel_manager(kernel)
    _start_stage_kernel(km, stage)
    return km


def _start_stage_kernel(km, stage: Stage) -> None:
    modules = ["pandas", "matplotlib.pyplot", *(f"volcast.{name}" for name in stage.code)]
    # ingest's worker server first: it imports pandas on the other core while the kernel imports the rest
    warm_up = "import volcast.ingest; volcast.ingest.start_worker_server(); " if stage.name == "ingest" else ""
    notebooks.start_kernel(km, modules, warm_up)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One node of the DAG: its notebook, what it reads and writes, and the code it runs."""

    name: str
    notebook: str
    inputs: tuple[str, ...]  # Layout attributes (or "source" for the ingest source)
    outputs: tuple[str, ...]  # Layout attributes
    code: tuple[str, ...]  # modules or packages of lib/volcast the stage executes
    notebook_only: tuple[str, ...] = ()  # notebook parameters that only steer what it shows

    def run_function(self):
        """The library function the notebook calls with its parameters (``volcast.<stage>.run``)."""
        import importlib

        return importlib.import_module(f"volcast.{self.name}").run

    @property
    def notebook_path(self) -> Path:
        return config.NOTEBOOKS_DIR / self.notebook

    @property
    def code_paths(self) -> list[Path]:
        """The source the stage runs (with the modules every stage uses): a module file or a package directory."""
        return [_module_path(name) for name in COMMON_CODE + self.code]


def _module_path(name: str) -> Path:
    module = LIBRARY_DIR / f"{name}.py"
    return module if module.exists() else LIBRARY_DIR / name


# Order matters: a stage's inputs are the source or outputs of stages before it (a test checks it).
DAG: tuple[Stage, ...] = (
    Stage("ingest", "01_ingest.ipynb", inputs=("source",), outputs=("raw_dir", "quarantine_dir"),
          code=("ingest",)),
    Stage("features", "02_features.ipynb", inputs=("raw_dir",), outputs=("features_dir",),
          code=("features",), notebook_only=("symbol",)),
    Stage("train", "03_train.ipynb", inputs=("features_dir",), outputs=("models_dir",),
          code=("train", "features")),
)
STAGES = {stage.name: stage for stage in DAG}
PATH_LABELS = {
    "source": "source<br/>Kaggle dir or zip, kaggle, demo",
    "raw_dir": "data/raw/",
    "quarantine_dir": "data/quarantine/",
    "features_dir": "data/features/",
    "models_dir": "models/ID/ + LATEST",
}


def mermaid() -> str:
    """The DAG as a Mermaid flowchart, generated from ``DAG`` (the README embeds this)."""
    lines = ["flowchart LR"]
    for name, label in PATH_LABELS.items():
        lines.append(f'    {name}[("{label}")]')
    for stage in DAG:
        lines.append(f'    {stage.name}{{{{"{stage.name}<br/>{stage.notebook}"}}}}')
        lines += [f"    {src} --> {stage.name}" for src in stage.inputs]
        lines += [f"    {stage.name} --> {dst}" for dst in stage.outputs]
    lines.append('    serve{{"serve<br/>API + dashboard.ipynb"}}')
    lines.append("    models_dir --> serve")
    lines.append("    features_dir --> serve")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Parameters


def notebook_parameters(stage: str) -> dict[str, Any]:
    """The stage notebook's declared parameters and their defaults (papermill's own reading)."""
    return notebooks.notebook_parameters(STAGES[stage].notebook_path)


def parse_param_value(text: str) -> Any:
    """`--param` values: Python/JSON literals (10, 0.2, true, "30D"), else the plain string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    value = notebooks.literal(text)
    return value if isinstance(value, (int, float, str, bool)) else text


def parse_params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """Turn ``["features.window=10", ...]`` into ``{"features": {"window": 10}}``, checked by name."""
    result: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        stage, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise UserError(f"--param {item!r}: expected STAGE.NAME=VALUE, e.g. features.window=10")
        if stage not in STAGES:
            raise UserError(f"--param {item!r}: unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        known = notebook_parameters(stage)
        if name not in known or name == "output_dir":
            settable = ", ".join(n for n in known if n != "output_dir")
            raise UserError(f"--param {item!r}: {stage} has no parameter {name!r}; it takes {settable}")
        result.setdefault(stage, {})[name] = parse_param_value(raw)
    return result


def parse_stages(text: str | None) -> list[str]:
    if not text:
        return [stage.name for stage in DAG]
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in wanted if name not in STAGES]
    if unknown:
        raise UserError(f"--stages: unknown stage {', '.join(unknown)}; choose from {','.join(STAGES)}")
    return [stage.name for stage in DAG if stage.name in wanted]  # DAG order, whatever the user's order


# ---------------------------------------------------------------------------------------------
# Fingerprints


def code_fingerprint(stage: Stage) -> str:
    return storage.code_digest(*stage.code_paths, stage.notebook_path)


def input_fingerprints(stage: Stage, layout: Layout, params: dict[str, Any]) -> dict[str, str | None]:
    result = {}
    for name in stage.inputs:
        if name == "source":
            source = params.get("source")
            if source in ("demo", "kaggle") or source is None:
                # demo is a pure function of its parameters; kaggle is refreshed on every run.
                result["source"] = f"{source}" if source == "demo" else f"{source}:{uuid.uuid4().hex}"
            else:
                result["source"] = fingerprint_path(Path(source))
        else:
            result[name] = fingerprint_path(getattr(layout, name))
    return result


def output_fingerprints(stage: Stage, layout: Layout) -> dict[str, str | None]:
    return {name: fingerprint_path(getattr(layout, name)) for name in stage.outputs}


# ---------------------------------------------------------------------------------------------
# Environment of a run


def library_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(config.PROJECT_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5,
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(config.PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass
class StageResult:
    name: str
    status: str  # ok | skipped | failed
    seconds: float
    notebook: str | None = None
    reason: str | None = None
    error: str | None = None


class StageFailed(Exception):
    def __init__(self, stage: str, error: str, notebook: Path | None, user_error: bool = False):
        super().__init__(f"stage {stage} failed: {error}")
        self.stage, self.error, self.notebook, self.user_error = stage, error, notebook, user_error


_RUN_STAMP = "%Y%m%dT%H%M%S.%f"


def new_run_id(runs_dir: Path | None = None, now: dt.datetime | None = None) -> str:
    """A run id that sorts after every run already in ``runs_dir``.

    ``ls runs/ | tail -1`` is the latest run: the stamp has microseconds, because an unchanged re-run
    takes well under a second, and if the clock is behind the newest id (stepped back, or two runs in
    one tick) the stamp is moved just past it. Runs of one output directory are serialised by its
    lock, so no two runs race here.
    """
    stamp = now or dt.datetime.now()
    newest = None
    if runs_dir is not None and runs_dir.is_dir():
        newest = max((p.name for p in runs_dir.iterdir() if p.is_dir()), default=None)
    if newest is not None:
        try:
            newest_stamp = dt.datetime.strptime(newest.split("-", 1)[0], _RUN_STAMP)
        except ValueError:  # a run id of the older, whole-second form, or a stray directory
            newest_stamp = None
        if newest_stamp is not None and stamp <= newest_stamp:
            stamp = newest_stamp + dt.timedelta(microseconds=1)
    return stamp.strftime(_RUN_STAMP) + "-" + uuid.uuid4().hex[:6]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _state_path(layout: Layout) -> Path:
    return layout.runs_dir / "state.json"


# Parameters that change how a stage runs, not what it writes: not part of its up-to-date check.
RUN_ONLY_PARAMS = ("output_dir", "incremental", "executor", "scheduler")


def up_to_date_reason(stage: Stage, layout: Layout, record: dict | None, fingerprint: dict) -> str | None:
    """Why the stage can be skipped (None when it must run)."""
    if not record:
        return None
    if record.get("fingerprint") != fingerprint:
        return None
    if record.get("outputs") != output_fingerprints(stage, layout):
        return None  # someone changed or removed the outputs since
    if any(value is None for value in record.get("outputs", {}).values()):
        return None
    return f"inputs, parameters and code unchanged since run {record.get('run_id')}"


def _stage_params(stage: str, layout: Layout, source: str | None, jobs: int | None,
                  overrides: dict[str, dict[str, Any]], force: bool = False) -> dict[str, Any]:
    declared = notebook_parameters(stage)
    params: dict[str, Any] = {"output_dir": str(layout.output_dir)}
    if force and "incremental" in declared:
        params["incremental"] = False  # --force: recompute, don't reuse the last run's partitions
    if stage == "ingest" and source is not None:
        params["source"] = source
    if jobs is not None and "jobs" in declared:
        params["jobs"] = jobs
    params.update(overrides.get(stage, {}))
    return params


def resolve_source(source: str | None, say: Callable[[str], None] = print) -> str:
    """The ingest source to inject: an absolute path, "kaggle" or "demo" (chosen when not given).

    ``ingest.resolve_default_source`` is the one rule (the ingest stage applies the same when run alone).
    """
    from .ingest import resolve_default_source

    return resolve_default_source(source, say, name="--source")


class _Stopper:
    """Turns SIGINT, SIGTERM and SIGHUP into a prompt stop of the run: ``Interrupted``.

    The first signal kills the running stage's kernel and its workers at once (outputs are published
    atomically: nothing partial is left where readers look, and a stage killed before its publish
    publishes nothing) and raises in the runner, which then records the run as interrupted, releases
    the lock and exits 128 + the signal's number. Raising matters: papermill waits for the kernel's
    output without a timeout and would never notice the dead kernel. Later signals only kill again,
    so a repeated Ctrl-C cannot cut the cleanup short.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signum: int | None = None
        self.km = None  # the running stage's kernel manager
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        self.kill_kernel()
        if first:
            raise Interrupted(signum)

    def kill_kernel(self) -> None:
        if self.km is not None:
            self.km.kill_group()

    def check(self) -> None:
        """Raise if a signal came (and something on the way swallowed the first raise)."""
        if self.signum is not None:
            self.kill_kernel()
            raise Interrupted(self.signum)


def run_pipeline(
    output_dir: str | os.PathLike | None = None,
    source: str | None = None,
    stages: list[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    jobs: int | None = None,
    say: Callable[[str], None] = print,
    progress: bool = True,
    executor: str | None = None,
    scheduler: str | None = None,
) -> dict:
    """Run the selected stages in DAG order; return the manifest.

    ``executor``/``scheduler``: where ingest's and features' partition tasks run (``volcast.executor``;
    default local workers, or dask when ``$VOLCAST_DASK_SCHEDULER`` is set). dask with no scheduler
    starts one LocalCluster for the run, shared by its stages.

    Raises StageFailed on a failing cell, and ``Interrupted`` on SIGINT / SIGTERM / SIGHUP (see ``_Stopper``).
    """
    import filelock

    layout = Layout.at(output_dir)
    selected = stages or [stage.name for stage in DAG]
    overrides = params or {}
    cluster = RunCluster(executor, scheduler, config.resolve_jobs(jobs))  # checks the choice; starts nothing
    layout.output_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(layout.lock_file))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise UserError(
            f"another volcast run is using {layout.output_dir}; wait for it to finish or pass another --output-dir"
        ) from None
    try:
        with _Stopper() as stopper:
            if "ingest" in selected:
                source = resolve_source(source, say)
            return _run_locked(layout, selected, source, overrides, force, jobs, say, progress, stopper, cluster)
    finally:
        cluster.close()
        lock.release()


def _run_locked(layout, selected, source, overrides, force, jobs, say, progress, stopper,
                cluster: RunCluster | None = None) -> dict:
    run_id = new_run_id(layout.runs_dir)
    run_dir = layout.runs_dir / run_id
    run_dir.mkdir(parents=True)
    kernel = ensure_kernel(layout)
    state = storage.read_json(_state_path(layout), default={}) or {}
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "status": "running",
        "started": _now(),
        "ended": None,
        "seconds": None,
        "output_dir": str(layout.output_dir),
        "source": source,
        "stages_requested": selected,
        "force": force,
        "parameters": {},
        "input_fingerprints": {},
        "code_fingerprints": {},
        "stages": {},
        "git_commit": git_commit(),
        "library_versions": library_versions(),
        "python": sys.executable,
        "host": platform.node(),
    }
    manifest_path = run_dir / "manifest.json"
    storage.atomic_write_json(manifest_path, manifest)
    say(f"volcast run {run_id} -> {layout.output_dir}")
    started = time.perf_counter()
    try:
        for name in selected:
            stage = STAGES[name]
            stage_params = _stage_params(name, layout, source, jobs, overrides, force)
            fingerprint = {
                "inputs": input_fingerprints(stage, layout, stage_params),
                "parameters": {k: v for k, v in stage_params.items() if k not in RUN_ONLY_PARAMS},
                "code": code_fingerprint(stage),
            }
            manifest["parameters"][name] = stage_params
            manifest["input_fingerprints"][name] = fingerprint["inputs"]
            manifest["code_fingerprints"][name] = fingerprint["code"]
            # No "upstream ran, so run": an upstream stage that changed nothing leaves the input
            # fingerprints as they were, and this stage is rightly skipped.
            reason = None if force else up_to_date_reason(stage, layout, state.get(name), fingerprint)
            if reason:
                say(f"- {name}: skipped ({reason}); --force re-runs it")
                manifest["stages"][name] = dataclasses.asdict(StageResult(name, "skipped", 0.0, reason=reason))
                storage.atomic_write_json(manifest_path, manifest)
                continue
            if cluster is not None and "executor" in notebook_parameters(name):
                stage_params.update(cluster.params())  # dask: the LocalCluster starts with the first such stage
                manifest["parameters"][name] = stage_params
            say(f"> {name}: running {stage.notebook}")
            manifest["stages"][name] = dataclasses.asdict(
                StageResult(name, "running", 0.0, str(run_dir / stage.notebook)))
            storage.atomic_write_json(manifest_path, manifest)
            try:
                result = _execute_stage(stage, stage_params, run_dir, kernel, progress, stopper)
            except Interrupted:
                manifest["stages"][name].update(status="interrupted", reason="interrupted")
                raise
            manifest["stages"][name] = dataclasses.asdict(result)
            storage.atomic_write_json(manifest_path, manifest)
            if result.status != "ok":
                raise StageFailed(name, result.error or "failed", run_dir / stage.notebook,
                                  user_error=(result.reason == "user-error"))
            state[name] = {
                "run_id": run_id,
                "fingerprint": fingerprint,
                "outputs": output_fingerprints(stage, layout),
                "finished": _now(),
            }
            storage.atomic_write_json(_state_path(layout), state)
            say(f"  {name}: ok in {result.seconds:.1f} s{_summary(name, layout)}")
        manifest["status"] = "ok"
    except StageFailed:
        manifest["status"] = "failed"
        raise
    except BaseException:
        manifest["status"] = "interrupted"
        raise
    finally:
        manifest["ended"] = _now()
        manifest["seconds"] = round(time.perf_counter() - started, 3)
        storage.atomic_write_json(manifest_path, manifest)
    say(f"run {run_id}: ok in {manifest['seconds']:.1f} s; notebooks and manifest in {run_dir}")
    return manifest


def _execute_stage(stage: Stage, params: dict, run_dir: Path, kernel: str, progress: bool,
                   stopper: _Stopper | None = None) -> StageResult:
    """Run the stage's notebook with papermill in a fresh kernel, started first (see ``_start_kernel``)."""
    stopper = stopper or _Stopper()
    output = run_dir / stage.notebook
    t0 = time.perf_counter()
    km = notebooks.kernel_manager(kernel)
    stopper.km = km
    try:
        stopper.check()
        _start_stage_kernel(km, stage)
        papermill = _import_papermill()  # meanwhile the kernel starts (only a process's first stage imports it)
        stopper.check()
        try:
            papermill.execute_notebook(
                str(stage.notebook_path),
                str(output),
                parameters=params,
                kernel_name=kernel,
                cwd=str(config.NOTEBOOKS_DIR),
                progress_bar=progress,
                request_save_on_cell_execute=True,
                km=km,
            )
        except papermill.PapermillExecutionError as exc:
            stopper.check()
            error = f"{exc.ename}: {str(exc.evalue).strip().splitlines()[0] if str(exc.evalue).strip() else ''}"
            reason = "user-error" if exc.ename == "UserError" else "cell-error"
            return StageResult(stage.name, "failed", round(time.perf_counter() - t0, 3), str(output), reason, error)
        except Exception:
            stopper.check()  # the kernel was killed by the stopper: papermill's error is only its echo
            raise
    finally:
        stopper.km = None
        with contextlib.suppress(Exception):  # a kernel the stopper killed may be half gone already
            km.shut_down()
    stopper.check()  # a signal that came as the last cell ended: the run still stops, its state unrecorded
    return StageResult(stage.name, "ok", round(time.perf_counter() - t0, 3), str(output))


def _summary(stage: str, layout: Layout) -> str:
    """One line of what the stage produced, read from its report."""
    report = storage.read_json(layout.report(stage), default=None)
    if not isinstance(report, dict):
        return ""
    try:
        if stage == "ingest":
            totals = report.get("totals", report)
            return (f": {totals['rows_kept']:,} rows kept, {totals['rows_quarantined']:,} quarantined, "
                    f"{len(report.get('rejected_files', []))} files set aside")
        if stage == "features":
            return f": {report['rows']:,} rows, {report['tickers']:,} tickers"
        if stage == "train":
            model, base = report["metrics"]["model"], report["metrics"]["baseline_vol_moving_avg"]
            return (f": model {report['model_id']}, MAE {model['mae']:,.0f} vs baseline {base['mae']:,.0f} "
                    f"({model['mae'] / base['mae']:.3f}x)")
    except (KeyError, TypeError, ZeroDivisionError):
        return ""
    return ""
