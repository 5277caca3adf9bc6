"""A stage's record in a run: its fingerprints, the up-to-date check that skips it, and its entries in
``DIR/runs/<run_id>/manifest.json`` and ``DIR/runs/state.json`` (``run_stage``, shared by ``run_pipeline``
and the Airflow DAG, so the two cannot drift).

``state.json`` answers "run the stage at all?" with whole-stage fingerprints; a skip starts no kernel.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import storage
from .config import Layout
from .execute import StageResult
from .runs import now
from .storage import fingerprint_path

if TYPE_CHECKING:
    from .pipeline import Stage


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


class StageFailed(Exception):
    def __init__(self, stage: str, error: str, notebook: Path | None, user_error: bool = False):
        super().__init__(f"stage {stage} failed: {error}")
        self.stage, self.error, self.notebook, self.user_error = stage, error, notebook, user_error


def state_path(layout: Layout) -> Path:
    """Stage-level skip state (see ``volcast.pipeline`` for the datasets' own per-partition state)."""
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


def run_stage(
    stage: Stage,
    layout: Layout,
    run_dir: Path,
    params: dict[str, Any],
    manifest: dict,
    execute: Callable[[dict[str, Any]], StageResult],
    force: bool = False,
    say: Callable[[str], None] = print,
) -> StageResult:
    """One stage of a run with the run's bookkeeping, for ``run_pipeline`` and the Airflow DAG alike.

    Records the stage's parameters and fingerprints in ``manifest``; skips the stage when it is up to date
    (``DIR/runs/state.json``), else calls ``execute(params)``, which runs its notebook (and may add run-only
    parameters). The result goes to ``manifest`` (written to ``run_dir/manifest.json`` at each step) and,
    when ok, to the state. Raises StageFailed when the stage failed; an exception from ``execute`` is
    recorded (interrupted or failed) and raised.
    """
    name = stage.name
    manifest_path = run_dir / "manifest.json"
    state = storage.read_json(state_path(layout), default={}) or {}
    fingerprint = {
        "inputs": input_fingerprints(stage, layout, params),
        "parameters": {k: v for k, v in params.items() if k not in RUN_ONLY_PARAMS},
        "code": code_fingerprint(stage),
    }
    manifest["parameters"][name] = params  # the same dict: parameters ``execute`` adds are recorded too
    manifest["input_fingerprints"][name] = fingerprint["inputs"]
    manifest["code_fingerprints"][name] = fingerprint["code"]
    # No "upstream ran, so run": an upstream stage that changed nothing leaves the input
    # fingerprints as they were, and this stage is rightly skipped.
    reason = None if force else up_to_date_reason(stage, layout, state.get(name), fingerprint)
    if reason:
        say(f"- {name}: skipped ({reason}); --force re-runs it")
        result = StageResult(name, "skipped", 0.0, reason=reason)
        manifest["stages"][name] = dataclasses.asdict(result)
        storage.atomic_write_json(manifest_path, manifest)
        return result
    say(f"> {name}: running {stage.notebook}")
    notebook = str(run_dir / stage.notebook)
    manifest["stages"][name] = dataclasses.asdict(StageResult(name, "running", 0.0, notebook))
    t0 = time.perf_counter()
    try:
        # Inside the try: a signal that lands while "running" is being written (the file may already be in
        # place) still records the stage as interrupted.
        storage.atomic_write_json(manifest_path, manifest)
        result = execute(params)
    except BaseException as exc:
        stopped = isinstance(exc, KeyboardInterrupt)
        manifest["stages"][name].update(
            status="interrupted" if stopped else "failed",
            seconds=round(time.perf_counter() - t0, 3),
            reason="interrupted" if stopped else "error",
            error=None if stopped else f"{type(exc).__name__}: {exc}"[:500],
        )
        storage.atomic_write_json(manifest_path, manifest)
        raise
    manifest["stages"][name] = dataclasses.asdict(result)
    storage.atomic_write_json(manifest_path, manifest)
    if result.status != "ok":
        user_error = result.reason == "user-error"
        raise StageFailed(name, result.error or "failed", run_dir / stage.notebook, user_error=user_error)
    state[name] = {
        "run_id": manifest["run_id"],
        "fingerprint": fingerprint,
        "outputs": output_fingerprints(stage, layout),
        "finished": now(),
    }
    storage.atomic_write_json(state_path(layout), state)
    return result
