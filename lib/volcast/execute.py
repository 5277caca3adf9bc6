"""Running one stage's notebook: its kernel (started ahead, with the notebook's imports), papermill, and
a prompt, clean stop on Ctrl-C / SIGTERM / SIGHUP (``Stopper``)."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config, notebooks
from .errors import Interrupted

if TYPE_CHECKING:
    from .pipeline import Stage


@dataclasses.dataclass
class StageResult:
    name: str
    status: str  # running | ok | skipped | failed | interrupted
    seconds: float
    notebook: str | None = None
    reason: str | None = None
    error: str | None = None


def start_kernel(kernel: str, stage: Stage):
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


class Stopper:
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


def execute_stage(
    stage: Stage, params: dict, run_dir: Path, kernel: str, progress: bool, stopper: Stopper | None = None
) -> StageResult:
    """Run the stage's notebook with papermill in a fresh kernel, started first (see ``start_kernel``)."""
    stopper = stopper or Stopper()
    output = run_dir / stage.notebook
    t0 = time.perf_counter()
    km = notebooks.kernel_manager(kernel)
    stopper.km = km
    try:
        stopper.check()
        _start_stage_kernel(km, stage)
        papermill = notebooks.import_papermill()  # meanwhile the kernel starts (a process imports it once)
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
        with contextlib.suppress(Exception):  # a kernel the stopper killed may be half gone already
            km.shut_down()
        stopper.km = None  # only now: a signal during the shutdown still kills the kernel
    stopper.check()  # a signal that came as the last cell ended: the run still stops, its state unrecorded
    return StageResult(stage.name, "ok", round(time.perf_counter() - t0, 3), str(output))
