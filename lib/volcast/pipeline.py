"""The DAG, declared once, and its execution: each stage is a notebook that papermill runs.

Every run leaves ``DIR/runs/<run_id>/`` with the executed notebooks (the log of the run) and
``manifest.json`` (parameters, input fingerprints, code versions, timings, status). A stage is
skipped when its inputs, parameters and code are unchanged since its last successful run.

Two kinds of state, for two decisions:
- ``DIR/runs/state.json`` (``volcast.record``): run the stage at all? Whole-stage fingerprints; a skip starts no kernel.
- ``_ingest_state.json`` / ``_features_state.json`` (inside each published dataset version, owned by the
  stage): when the stage runs, which files or partitions can be carried over unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import config, notebooks, retention, storage
from .config import Layout
from .errors import UserError
from .execute import StageResult

# Kept importable from here: notebooks, tests and benchmarks use these names.
from .execute import Stopper as _Stopper
from .execute import execute_stage as _execute_stage
from .execute import start_kernel as _start_kernel  # noqa: F401
from .executor import RunCluster
from .notebooks import KERNEL_NAME, ensure_kernel, refresh_notebooks, sync_notebooks  # noqa: F401
from .notebooks import import_papermill as _import_papermill  # noqa: F401
from .record import (  # noqa: F401
    RUN_ONLY_PARAMS,
    StageFailed,
    code_fingerprint,
    input_fingerprints,
    output_fingerprints,
    run_stage,
    up_to_date_reason,
)
from .record import state_path as _state_path  # noqa: F401
from .remote import RunTarget
from .runs import git_commit, library_versions, new_manifest, new_run_id  # noqa: F401
from .runs import now as _now
from .runs import summary as _summary
from .storage import fingerprint_path  # noqa: F401

LIBRARY_DIR = Path(__file__).resolve().parent
COMMON_CODE = ("config", "storage", "errors", "__init__")


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
    Stage("ingest", "01_ingest.ipynb", inputs=("source",), outputs=("raw_dir", "quarantine_dir"), code=("ingest",)),
    Stage(
        "features",
        "02_features.ipynb",
        inputs=("raw_dir",),
        outputs=("features_dir",),
        code=("features",),
        notebook_only=("symbol",),
    ),
    Stage("train", "03_train.ipynb", inputs=("features_dir",), outputs=("models_dir",), code=("train", "features")),
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
# Running


def stage_parameters(
    stage: str,
    layout: Layout,
    source: str | None,
    jobs: int | None,
    overrides: dict[str, dict[str, Any]],
    force: bool = False,
) -> dict[str, Any]:
    """The parameters injected into ``stage``'s notebook for a run's options (``overrides`` from ``parse_params``)."""
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


_stage_params = stage_parameters  # its earlier name


def resolve_source(source: str | None, say: Callable[[str], None] = print) -> str:
    """The ingest source to inject: an absolute path, "kaggle" or "demo" (chosen when not given).

    ``ingest.resolve_default_source`` is the one rule (the ingest stage applies the same when run alone).
    """
    from .ingest import resolve_default_source

    return resolve_default_source(source, say, name="--source")


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
    keep: int = retention.DEFAULT_KEEP,
) -> dict:
    """Run the selected stages in DAG order; return the manifest.

    ``keep``: after a successful run, models and run records beyond the ``keep`` newest are pruned (the
    served model and the stages' last runs stay; ``volcast.retention``).

    ``executor``/``scheduler``: where ingest's and features' partition tasks run (``volcast.executor``;
    default local workers, or dask when ``$VOLCAST_DASK_SCHEDULER`` is set). dask with no scheduler
    starts one LocalCluster for the run, shared by its stages.

    Raises StageFailed on a failing cell, and ``Interrupted`` on SIGINT / SIGTERM / SIGHUP (see ``_Stopper``).
    """
    import filelock

    target = RunTarget(output_dir, say)  # s3://...: the stages work on its local working copy
    layout = Layout.at(target.local)
    selected = stages or [stage.name for stage in DAG]
    for name in selected:
        notebooks.check_pair(STAGES[name].notebook_path)  # a .py twin edited and not synced would be ignored
    overrides = params or {}
    cluster = RunCluster(executor, scheduler, config.resolve_jobs(jobs))  # checks the choice; starts nothing
    keep = retention.check_keep(keep)
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
            target.start()
            if "ingest" in selected:
                source = resolve_source(source, say)
            return _run_locked(
                layout, selected, source, overrides, force, jobs, say, progress, stopper, cluster, target, keep
            )
    finally:
        cluster.close()
        target.close()  # a store: its run lock
        lock.release()


def _run_locked(
    layout,
    selected,
    source,
    overrides,
    force,
    jobs,
    say,
    progress,
    stopper,
    cluster: RunCluster | None = None,
    target: RunTarget | None = None,
    keep: int = retention.DEFAULT_KEEP,
) -> dict:
    run_id = new_run_id(layout.runs_dir)
    served = retention.served_model(layout)  # a server may serve it until it next reads LATEST: kept
    run_dir = layout.runs_dir / run_id
    run_dir.mkdir(parents=True)
    kernel = ensure_kernel(layout)
    label = (target and target.label) or str(layout.output_dir)
    manifest = new_manifest(run_id, label, source, selected, force)
    manifest_path = run_dir / "manifest.json"
    storage.atomic_write_json(manifest_path, manifest)
    say(f"volcast run {run_id} -> {layout.output_dir}")
    started = time.perf_counter()
    try:
        for position, name in enumerate(selected):
            stage = STAGES[name]
            after = STAGES[selected[position + 1]] if position + 1 < len(selected) else None

            def execute(params: dict[str, Any], stage: Stage = stage, after: Stage | None = after) -> StageResult:
                if cluster is not None and "executor" in notebook_parameters(stage.name):
                    params.update(cluster.params())  # dask: the LocalCluster starts with the first such stage
                # The next stage's kernel starts after this stage's own cell, overlapping its remaining cells.
                on_ready = (lambda: stopper.start_ahead(kernel, after)) if after is not None else None
                return _execute_stage(stage, params, run_dir, kernel, progress, stopper, on_ready)

            params = stage_parameters(name, layout, source, jobs, overrides, force)
            result = run_stage(stage, layout, run_dir, params, manifest, execute, force, say)
            if result.status == "skipped":
                stopper.drop_ahead(name)  # started while the stage before ran, which changed nothing it reads
                continue
            if target is not None:
                target.stage_done(stage.outputs)  # a store: files first, then the pointers
            say(f"  {name}: ok in {result.seconds:.1f} s{_summary(name, layout)}")
        manifest["status"] = "ok"
        manifest["retention"] = retention.prune(layout.output_dir, keep, current_run=run_id, protect=(served,))
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
        if target is not None:  # a store: the run's record, failed or not; --keep there after a success
            target.run_done(run_dir, keep=keep if manifest["status"] == "ok" else None)
    say(f"run {run_id}: ok in {manifest['seconds']:.1f} s; notebooks and manifest in {run_dir}")
    return manifest
