"""Retention: what a run prunes from its output directory when it ends (models and run records).

A daily schedule makes one model and one run record per day. ``prune`` keeps, of each:

- models (``models/<id>/``): the ``keep`` newest ids (ids sort in the order they were made), the one
  ``models/LATEST`` names (the model being served), and any named in ``protect`` (the pipeline passes
  the one LATEST named when the run started: an API server may still serve it until it next reads LATEST);
- run records (``runs/<run_id>/``): the ``keep`` newest, the run in progress, and every run that
  ``runs/state.json`` names (the last successful run of each stage: the lineage of what is on disk).

Dataset versions are not pruned here: ``storage.publish_dir`` keeps the current version and the one it
replaced (a reader that resolved the link just before the swap finishes reading it) and removes older
ones as it publishes, so no reader is ever on a version that is removed.

``prune_store`` applies the same rule to an output directory on object storage (``volcast.remote``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import storage
from .config import Layout
from .errors import UserError

DEFAULT_KEEP = 10


def check_keep(keep) -> int:
    """``keep`` as an int >= 1, or a one-line error."""
    text = str(keep).strip()
    if isinstance(keep, bool) or not text.isdigit() or int(text) < 1:
        raise UserError(f"--keep must be a whole number >= 1; got {keep!r}")
    return int(text)


def served_model(layout: Layout) -> str | None:
    """The model id ``models/LATEST`` names, or None."""
    try:
        name = layout.latest_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name or None


def _dirs(parent: Path) -> list[str]:
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))


def plan(
    models: list[str],
    runs: list[str],
    keep: int,
    *,
    served: str | None,
    state: dict,
    current_run: str | None,
    protect: tuple[str | None, ...] = (),
) -> tuple[list[str], list[str]]:
    """The rule, for a local directory and a store alike: (models to remove, run records to remove)."""
    models, runs = sorted(models), sorted(runs)
    keep_models = set(models[-keep:]) | {served} | set(protect)
    lineage = {record.get("run_id") for record in state.values() if isinstance(record, dict)}
    keep_runs = set(runs[-keep:]) | lineage | {current_run}
    return [m for m in models if m not in keep_models], [r for r in runs if r not in keep_runs]


def prune(
    output_dir, keep: int = DEFAULT_KEEP, *, current_run: str | None = None, protect: tuple[str | None, ...] = ()
) -> dict:
    """Remove models and run records beyond the ``keep`` newest (see the module docstring).

    Returns ``{"models_removed": [...], "runs_removed": [...], "keep": keep}``."""
    keep = check_keep(keep)
    layout = Layout.at(output_dir)
    state = storage.read_json(layout.runs_dir / "state.json", default={}) or {}
    removed_models, removed_runs = plan(
        _dirs(layout.models_dir),
        _dirs(layout.runs_dir),
        keep,
        served=served_model(layout),
        state=state,
        current_run=current_run,
        protect=protect,
    )

    for parent in (layout.models_dir, layout.runs_dir):  # left by a run killed while it pruned
        for stale in parent.glob(".*.removing") if parent.is_dir() else ():
            shutil.rmtree(stale, ignore_errors=True)
    for name in removed_models:
        _remove(layout.models_dir / name)
    for name in removed_runs:
        _remove(layout.runs_dir / name)
    return {"keep": keep, "models_removed": removed_models, "runs_removed": removed_runs}


def _remove(path: Path) -> None:
    """Move aside, then delete: a half-deleted model directory is never left under its own name."""
    doomed = path.with_name(f".{path.name}.removing")
    try:
        path.rename(doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


# -- an output directory on object storage ------------------------------------------------------------


def _store_dirs(remote, rel: str) -> list[str]:
    """The "directories" (common prefixes) directly under ``rel`` on the store, hidden ones left out."""
    try:
        entries = remote.fs.ls(remote.key(rel), detail=True, refresh=True)
    except FileNotFoundError:
        return []
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"]
    return sorted(n for n in names if n and not n.startswith("."))


def prune_store(remote, keep: int, *, current_run: str | None = None, protect: tuple[str | None, ...] = ()) -> dict:
    """``prune`` on a store (a ``volcast.remote.Remote``): the same rule over the store's ``models/`` and
    ``runs/``, with the store's ``models/LATEST`` as the served model and its ``runs/state.json`` as the
    lineage. Models made on other machines count too. Dataset versions are pruned as they are pushed.

    A model is removed after ``models/LATEST`` stopped naming it, so an API worker following the store
    never resolves a model that is going; one that loaded it keeps it in memory."""
    import json

    keep = check_keep(keep)
    try:
        state = json.loads(remote.read_text("runs/state.json") or "{}")
    except ValueError:
        state = None
    runs = _store_dirs(remote, "runs")
    if not isinstance(state, dict):  # unreadable lineage: keep every run record rather than guess
        state, runs = {}, []
    removed_models, removed_runs = plan(
        _store_dirs(remote, "models"),
        runs,
        keep,
        served=remote.model_id(),
        state=state,
        current_run=current_run,
        protect=protect,
    )
    for name in removed_models:
        remote.fs.rm(remote.key(f"models/{name}"), recursive=True)
    for name in removed_runs:
        remote.fs.rm(remote.key(f"runs/{name}"), recursive=True)
    return {"keep": keep, "models_removed": removed_models, "runs_removed": removed_runs}
