"""The DAG, declared once, and its execution: each stage is a notebook that papermill runs.

Every run leaves ``DIR/runs/<run_id>/`` with the executed notebooks (the log of the run) and
``manifest.json`` (parameters, input fingerprints, code versions, timings, status). A stage is
skipped when its inputs, parameters and code are unchanged since its last successful run.
"""
from __future__ import annotations

import dataclasses
import functools
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from . import config, storage
from .config import Layout
from .errors import UserError

LIBRARY_DIR = Path(__file__).resolve().parent
KERNEL_NAME = "volcast-python"
TRACKED_PACKAGES = (
    "volcast", "numpy", "pandas", "pyarrow", "bottleneck", "scikit-learn", "catboost",
    "papermill", "nbclient", "ipykernel", "voila", "ipywidgets", "tornado", "kaggle",
)
COMMON_CODE = ("config.py", "storage.py", "errors.py", "__init__.py")


def _import_papermill():
    """papermill, imported without the 0.7 s that jsonschema's optional IRI checker costs.

    papermill -> nbformat -> jsonschema imports ``rfc3987_syntax`` when it is installed (it is, through
    jupyter-events' ``jsonschema[format-nongpl]``), and that module compiles about 35 Lark grammars at
    import (python-jsonschema/jsonschema#1428). No notebook schema uses the ``iri`` format it checks, so
    marking the module absent before the first import only skips that checker. Measured here: ``import
    papermill`` 1.10 s -> 0.37 s, paid by every ``run_pipeline.py`` process.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # None in sys.modules = "not installed"
    import papermill

    return papermill


def _start_kernel(kernel: str, stage: "Stage"):
    """Start the stage's kernel now, importing what its notebook imports first, and return its manager.

    Started before the runner imports papermill and reads the notebook, the kernel's start-up and
    imports (~1.3 s) overlap them; for ingest, its worker server starts first, beside the kernel. The
    imports leave no names behind: the notebook still imports what it uses. nbclient, handed a
    running kernel, neither starts nor stops it: ``_execute_stage`` does, with ``shut_down``.
    """
    from jupyter_client.manager import KernelManager

    class _KernelManager(KernelManager):
        """Remembers the clients it hands out, so they are closed with the kernel."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.handed_out = []

        def client(self, **kwargs):
            kc = super().client(**kwargs)
            self.handed_out.append(kc)
            return kc

        def shut_down(self) -> None:
            for kc in self.handed_out:
                kc.stop_channels()
            if self.has_kernel:
                # Every output is written (atomically) before the last cell ends; a graceful shutdown
                # waited 0.4-2.6 s for the kernel's exit hooks (measured at x3, features stage).
                self.shutdown_kernel(now=True)

    modules = ["pandas", "matplotlib.pyplot", *(f"volcast.{Path(name).stem}" for name in stage.code)]
    roots = sorted({m.split(".")[0] for m in modules})
    # ingest's worker server first: it imports pandas on the other core while the kernel imports the rest
    warm_up = "import volcast.ingest; volcast.ingest.start_worker_server(); " if stage.name == "ingest" else ""
    preload = f"{warm_up}import {', '.join(modules)}; del {', '.join(roots)}"
    km = _KernelManager(kernel_name=kernel)
    km.start_kernel(cwd=str(config.NOTEBOOKS_DIR),
                    extra_arguments=["--HistoryManager.hist_file=:memory:",  # as nbclient starts kernels
                                     f"--IPKernelApp.exec_lines={[preload]!r}"])
    return km


@dataclasses.dataclass(frozen=True)
class Stage:
    """One node of the DAG: its notebook, what it reads and writes, and the code it runs."""

    name: str
    notebook: str
    inputs: tuple[str, ...]  # Layout attributes (or "source" for the ingest source)
    outputs: tuple[str, ...]  # Layout attributes
    code: tuple[str, ...]  # modules of lib/volcast the stage executes
    after: tuple[str, ...] = ()
    notebook_only: tuple[str, ...] = ()  # notebook parameters that only steer what it shows

    def run_function(self):
        """The library function the notebook calls with its parameters (``volcast.<stage>.run``)."""
        import importlib

        return importlib.import_module(f"volcast.{self.name}").run

    @property
    def notebook_path(self) -> Path:
        return config.NOTEBOOKS_DIR / self.notebook


DAG: tuple[Stage, ...] = (
    Stage("ingest", "01_ingest.ipynb", inputs=("source",), outputs=("raw_dir", "quarantine_dir"),
          code=("ingest",)),  # a package: every .py file in it
    Stage("features", "02_features.ipynb", inputs=("raw_dir",), outputs=("features_dir",),
          code=("features.py",), after=("ingest",), notebook_only=("symbol",)),
    Stage("train", "03_train.ipynb", inputs=("features_dir",), outputs=("models_dir",),
          code=("train.py", "features.py"), after=("features",)),
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
    path = STAGES[stage].notebook_path
    return dict(_declared_parameters(str(path), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=None)
def _declared_parameters(path: str, mtime_ns: int) -> tuple[tuple[str, Any], ...]:
    # Read once per notebook version: --param checks and every stage's injection ask again.
    papermill = _import_papermill()
    return tuple((name, _literal(spec["default"])) for name, spec in papermill.inspect_notebook(path).items())


def _literal(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_param_value(text: str) -> Any:
    """`--param` values: Python/JSON literals (10, 0.2, true, "30D"), else the plain string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    value = _literal(text)
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


def _hash_lines(lines) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(str(line).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def fingerprint_path(path: Path) -> str | None:
    """A cheap, stable fingerprint of a file or directory tree: names, sizes and mtimes.

    Stat-based (no content read), so an unchanged re-run of 8,000 files takes milliseconds. Stages
    hard-link unchanged partitions into each new version, so an unchanged partition keeps its mtime.
    """
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        st = path.stat()
        return _hash_lines([path.name, st.st_size, st.st_mtime_ns])
    root = path.resolve()
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith((".", "_")):  # hidden and _metadata files (stage state) are not data
                continue
            st = os.stat(os.path.join(dirpath, name))
            entries.append(f"{os.path.relpath(os.path.join(dirpath, name), root)}|{st.st_size}|{st.st_mtime_ns}")
    return _hash_lines(entries)


def code_fingerprint(stage: Stage) -> str:
    return storage.code_digest(*[LIBRARY_DIR / name for name in COMMON_CODE + stage.code], stage.notebook_path)


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


def ensure_kernel(layout: Layout) -> str:
    """A kernelspec that runs the notebooks on *this* interpreter, whatever is registered elsewhere.

    Works in a fresh virtualenv with no ``ipykernel install``: the spec lives in the output dir and
    is put first on JUPYTER_PATH for this process and its children.
    """
    root = layout.output_dir / ".jupyter"
    spec_dir = root / "kernels" / KERNEL_NAME
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 "--IPKernelApp.log_level=ERROR"],  # no loopback-TCP notice on every stage
        "display_name": f"volcast ({sys.executable})",
        "language": "python",
        "env": {"PYTHONPATH": os.pathsep.join(filter(None, [str(LIBRARY_DIR.parent), os.environ.get("PYTHONPATH")]))},
        "metadata": {"debugger": False},
    }
    storage.atomic_write_json(spec_dir / "kernel.json", spec)
    paths = [str(root)] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != str(root)]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(paths)
    return KERNEL_NAME


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
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _state_path(layout: Layout) -> Path:
    return layout.runs_dir / "state.json"


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
    """The ingest source to inject: an absolute path, "kaggle" or "demo" (chosen when not given)."""
    if source is None:
        from . import ingest

        chosen = "kaggle" if ingest.has_kaggle_credentials() else "demo"
        say(ingest.describe_default_source())
        return chosen
    if source in ("demo", "kaggle"):
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"--source {source}: no such file or directory; give a Kaggle-layout folder or .zip, 'kaggle' or 'demo'")
    return str(path.resolve())


def run_pipeline(
    output_dir: str | os.PathLike | None = None,
    source: str | None = None,
    stages: list[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    jobs: int | None = None,
    say: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Run the selected stages in DAG order; return the manifest. Raises StageFailed on a failing cell."""
    import filelock

    layout = Layout.at(output_dir)
    selected = stages or [stage.name for stage in DAG]
    overrides = params or {}
    layout.output_dir.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(layout.lock_file))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise UserError(
            f"another volcast run is using {layout.output_dir}; wait for it to finish or pass another --output-dir"
        ) from None
    try:
        if "ingest" in selected:
            source = resolve_source(source, say)
        return _run_locked(layout, selected, source, overrides, force, jobs, say, progress)
    finally:
        lock.release()


def _run_locked(layout, selected, source, overrides, force, jobs, say, progress) -> dict:
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
                "parameters": {k: v for k, v in stage_params.items() if k not in ("output_dir", "incremental")},
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
            say(f"> {name}: running {stage.notebook}")
            result = _execute_stage(stage, stage_params, run_dir, kernel, progress)
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


def _execute_stage(stage: Stage, params: dict, run_dir: Path, kernel: str, progress: bool) -> StageResult:
    """Run the stage's notebook with papermill in a fresh kernel, started first (see ``_start_kernel``)."""
    output = run_dir / stage.notebook
    t0 = time.perf_counter()
    km = _start_kernel(kernel, stage)
    try:
        papermill = _import_papermill()  # meanwhile the kernel starts (only a process's first stage imports it)
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
            error = f"{exc.ename}: {str(exc.evalue).strip().splitlines()[0] if str(exc.evalue).strip() else ''}"
            reason = "user-error" if exc.ename == "UserError" else "cell-error"
            return StageResult(stage.name, "failed", round(time.perf_counter() - t0, 3), str(output), reason, error)
    finally:
        km.shut_down()
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


def _notebook_paths(names: list[str] | None, notebooks_dir: Path) -> list[Path]:
    """The .ipynb side of each named pair (``02_features``, ``02_features.py`` or ``.ipynb``), or all of them."""
    if not names:
        return sorted(notebooks_dir.glob("*.ipynb"))
    return [notebooks_dir / (Path(name).stem + ".ipynb") for name in names]


def sync_notebooks(names: list[str] | None = None, notebooks_dir: str | os.PathLike | None = None) -> list[Path]:
    """Bring each Jupytext pair (``X.ipynb`` + its ``py:percent`` twin ``X.py``) in step: ``jupytext --sync``.

    The side edited last gives the cells; the .ipynb keeps its stored outputs for cells whose source is
    unchanged. The pairing itself is in ``notebooks/jupytext.toml``, which JupyterLab also reads.
    """
    from jupytext.cli import jupytext as jupytext_cli

    paths = _notebook_paths(names, Path(notebooks_dir or config.NOTEBOOKS_DIR))
    missing = [str(p) for p in paths if not p.exists() and not p.with_suffix(".py").exists()]
    if missing:
        raise UserError(f"no such notebook: {', '.join(missing)}")
    jupytext_cli(["--sync", "--quiet", *map(str, paths)])
    return paths


def refresh_notebooks(names: list[str] | None = None, say: Callable[[str], None] = print) -> None:
    """Re-execute the committed notebooks in place with their default (demo) parameters.

    This refreshes the stored outputs that nbval compares, after an intended change. Each pair is synced
    first (an edit made on the .py side is what runs) and after (the twin is rewritten, so it is not older
    than its .ipynb). nbclient (not papermill) so the committed notebooks carry no injected cell or run
    metadata.
    """
    import nbclient
    import nbformat

    layout = Layout.at(config.NOTEBOOKS_DIR / "../outputs/demo")
    kernel = ensure_kernel(layout)
    order = [stage.notebook for stage in DAG] + [config.DASHBOARD_NOTEBOOK]
    for path in sync_notebooks(names or order):
        say(f"refreshing {path.name}")
        nb = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(nb, kernel_name=kernel, timeout=1800,
                                resources={"metadata": {"path": str(config.NOTEBOOKS_DIR)}}).execute()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        storage.atomic_write_text(path, nbformat.writes(nb) + "\n")
        sync_notebooks([path.name])
        path.with_suffix(".py").touch()  # the twin is current: not older than the .ipynb just written
    shutil.rmtree(config.NOTEBOOKS_DIR / "catboost_info", ignore_errors=True)
