"""The record of a run: its id, the environment it ran in, and its one-line summaries of each stage."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
import sys
import uuid
from importlib import metadata
from pathlib import Path

from . import config, storage
from .config import Layout

TRACKED_PACKAGES = (
    "volcast",
    "numpy",
    "pandas",
    "pyarrow",
    "bottleneck",
    "scikit-learn",
    "catboost",
    "papermill",
    "nbclient",
    "ipykernel",
    "voila",
    "ipywidgets",
    "tornado",
    "kaggle",
)


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
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(config.PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


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


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def new_manifest(run_id: str, output_dir: str, source: str | None, stages: list[str], force: bool) -> dict:
    """A run's ``manifest.json`` as it starts: what was asked, where, and the environment; each stage adds
    its parameters, fingerprints and result as it runs (``pipeline.run_stage``)."""
    return {
        "run_id": run_id,
        "status": "running",
        "started": now(),
        "ended": None,
        "seconds": None,
        "output_dir": output_dir,
        "source": source,
        "stages_requested": list(stages),
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


def summary(stage: str, layout: Layout) -> str:
    """One line of what the stage produced, read from its report."""
    report = storage.read_json(layout.report(stage), default=None)
    if not isinstance(report, dict):
        return ""
    try:
        if stage == "ingest":
            totals = report.get("totals", report)
            return (
                f": {totals['rows_kept']:,} rows kept, {totals['rows_quarantined']:,} quarantined, "
                f"{len(report.get('rejected_files', []))} files set aside"
            )
        if stage == "features":
            return f": {report['rows']:,} rows, {report['tickers']:,} tickers"
        if stage == "train":
            model, base = report["metrics"]["model"], report["metrics"]["baseline_vol_moving_avg"]
            return (
                f": model {report['model_id']}, MAE {model['mae']:,.0f} vs baseline {base['mae']:,.0f} "
                f"({model['mae'] / base['mae']:.3f}x)"
            )
    except (KeyError, TypeError, ZeroDivisionError):
        return ""
    return ""
