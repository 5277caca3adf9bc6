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


def prune(
    output_dir, keep: int = DEFAULT_KEEP, *, current_run: str | None = None, protect: tuple[str | None, ...] = ()
) -> dict:
    """Remove models and run records beyond the ``keep`` newest (see the module docstring).

    Returns ``{"models_removed": [...], "runs_removed": [...], "keep": keep}``."""
    keep = check_keep(keep)
    layout = Layout.at(output_dir)
    models = _dirs(layout.models_dir)
    keep_models = set(models[-keep:]) | {served_model(layout)} | set(protect)
    removed_models = [m for m in models if m not in keep_models]

    runs = _dirs(layout.runs_dir)
    state = storage.read_json(layout.runs_dir / "state.json", default={}) or {}
    lineage = {record.get("run_id") for record in state.values() if isinstance(record, dict)}
    keep_runs = set(runs[-keep:]) | lineage | {current_run}
    removed_runs = [r for r in runs if r not in keep_runs]

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
