"""Running one stage's notebook: its kernel (started ahead, with the notebook's imports; the next stage's
kernel started while this stage runs), papermill, and a prompt, clean stop on Ctrl-C / SIGTERM / SIGHUP
(``Stopper``)."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Callable
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
    # Seconds before the stage began that its kernel was started, while the stage before it ran (None: started
    # by the stage). That start is counted in the earlier stage's seconds: the stages' seconds add up to the run's.
    kernel_started_ahead: float | None = None


def start_kernel(kernel: str, stage: Stage):
    """Start the stage's kernel now, importing what its notebook imports first, and return its manager.

    Started before the runner imports papermill and reads the notebook, the kernel's start-up and
    imports overlap them; for ingest, its worker server starts first, beside the kernel.
    """
    km = notebooks.kernel_manager(kernel)
    _start_stage_kernel(km, stage)
    return km


def _start_stage_kernel(km, stage: Stage, params: dict | None = None) -> None:
    modules = ["pandas", "matplotlib.pyplot", *(f"volcast.{name}" for name in stage.code)]
    # ingest's worker server first: it imports pandas on the other core while the kernel imports the rest
    warm = stage.name == "ingest" and (params is None or _reads_every_file(params))
    warm_up = "import volcast.ingest; volcast.ingest.start_worker_server(); " if warm else ""
    notebooks.start_kernel(km, modules, warm_up)


def _reads_every_file(params: dict) -> bool:
    """Whether an ingest run with ``params`` will parse every file on local worker processes (no raw dataset
    yet, or ``--force``), so its worker server is worth starting beside its kernel. Otherwise (an incremental
    run: a daily update parses a few appended lines per file in threads) ingest starts it if a task needs it,
    and its start does not take a core from the kernel's."""
    from .executor import LOCAL, resolve
    from .ingest.state import state_path

    try:
        if resolve(params.get("executor", LOCAL), params.get("scheduler", ""))[0] != LOCAL:
            return False
    except Exception:  # a bad choice: the stage says so itself
        return False
    if config.resolve_jobs(params.get("jobs", 0)) <= 1:
        return False
    state = state_path(config.Layout.at(params["output_dir"]))
    return not params.get("incremental", True) or state is None or not state.exists()


class Stopper:
    """Turns SIGINT, SIGTERM and SIGHUP into a prompt stop of the run: ``Interrupted``.

    A signal kills the running stage's kernel and its workers at once (outputs are published
    atomically: nothing partial is left where readers look, and a stage killed before its publish
    publishes nothing) and raises in the runner, which then records the run as interrupted, releases
    the lock and exits 128 + the signal's number. Raising matters: papermill waits for the kernel's
    output without a timeout and would never notice the dead kernel. Later signals only kill, so a
    repeated Ctrl-C cannot cut the cleanup short. Whatever the moment of the signal:

    - While a stage's kernel is being started (``holding``), a signal is only recorded, and raised
      as the start returns, after its kernel is killed: raised inside ``Popen``, after the fork and
      before jupyter_client records the process, it would orphan a kernel that nobody kills.
    - From the first signal until the stage has ended, a watchdog thread kills its kernel again each
      ``GRACE`` seconds (one started since included) and signals the runner again when the stage is
      still there: code on the way (a library's ``except BaseException``, a ``__del__``) may have
      swallowed the raise, and papermill would then wait on the dead kernel forever; or the kernel's
      shutdown is stuck in zmq (``CLOSING_GRACE``).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    GRACE = 1.0  # seconds a stage has to end after a raise before the watchdog raises again
    # ... and to shut its killed kernel down: zmq's context term can block for good on a socket a raise left
    # half made; the signal's EINTR ends it (pyzmq then treats the context as closed)
    CLOSING_GRACE = 1.5

    def __init__(self):
        self.signum: int | None = None
        self.km = None  # the running stage's kernel manager
        self.ahead: dict[str, tuple[Any, float]] = {}  # stage name -> (kernel manager, start time): started ahead
        self._previous: dict[int, Any] = {}
        self._holding = 0
        self._stage: str | None = None  # None, "running", or "closing" (shutting its kernel down)
        self._since = 0.0  # monotonic time of the last raise, or of the stage's closing
        self._again = False  # the watchdog asks the handler to raise once more
        self._lock = threading.Lock()  # the watchdog signals only while the handlers are ours

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        try:
            for name in list(self.ahead):  # a later stage that never ran (a failure, a stop): its kernel goes
                self.drop_ahead(name)
        finally:
            with self._lock:
                for signum, handler in self._previous.items():
                    signal.signal(signum, handler)
                self._previous = {}

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        self.kill_kernel()
        if first and self._previous:
            threading.Thread(target=self._watch, name="volcast-stopper", daemon=True).start()
        again, self._again = self._again and self._stage is not None, False
        if (first or again) and not self._holding:
            self._since = time.monotonic()
            raise Interrupted(self.signum)

    def kill_kernel(self) -> None:
        for km in [self.km, *(km for km, _ in list(self.ahead.values()))]:
            if km is not None:
                km.kill_group()

    def start_ahead(self, kernel: str, stage: Stage) -> None:
        """Start ``stage``'s kernel now, for a later ``execute_stage``; killed on a signal like the running one."""
        if stage.name in self.ahead:
            return
        km = notebooks.kernel_manager(kernel)
        self.ahead[stage.name] = (km, time.perf_counter())  # known before it forks: a signal kills it
        try:
            with self.holding():
                _start_stage_kernel(km, stage)
        except Exception:  # not this stage's failure: the later stage starts its own kernel as it begins
            self.drop_ahead(stage.name)

    def claim_ahead(self, name: str):
        """``(kernel manager, start time)`` of the kernel started ahead for stage ``name``, or ``(None, None)``."""
        return self.ahead.get(name, (None, None))

    def drop_ahead(self, name: str) -> None:
        """Shut down the kernel started ahead for stage ``name`` (it will not run: skipped, or the run ended)."""
        km, _ = self.ahead.get(name, (None, None))
        if km is not None:
            try:
                with contextlib.suppress(Exception):
                    km.shut_down()
            finally:
                self.ahead.pop(name, None)

    def check(self) -> None:
        """Raise if a signal came (and something on the way swallowed the first raise, or held it)."""
        if self.signum is not None:
            self.kill_kernel()
            self._since = time.monotonic()
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def holding(self):
        """A step no raise may cut (a kernel's start): a signal during it raises as it returns."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            self.check()  # also when the step failed: the run was stopped, and says so

    @contextlib.contextmanager
    def stage(self, km):
        """A stage's extent: its kernel ``km`` is killed on a signal, and shut down as the stage ends."""
        self.km, self._stage = km, "running"
        for name, (ahead, _) in list(self.ahead.items()):
            if ahead is km:  # now the running one
                self.ahead.pop(name)
        try:
            self.check()
            yield km
        finally:
            self._stage, self._since = "closing", time.monotonic()
            if self.signum is not None:
                _quiet_event_loop()
            try:
                with contextlib.suppress(Exception):  # a kernel the stopper killed may be half gone already
                    km.shut_down()
            finally:
                self.km, self._stage = None, None  # only now: a signal during the shutdown still kills
        self.check()  # a signal that came as the last cell ended: the run still stops, its state unrecorded

    def _watch(self) -> None:
        while self._previous:  # until the run's handlers are restored
            time.sleep(self.GRACE / 4)
            self.kill_kernel()
            grace = self.CLOSING_GRACE if self._stage == "closing" else self.GRACE
            with self._lock:
                if self._stage and not self._holding and self._previous and time.monotonic() - self._since > grace:
                    self._again, self._since = True, time.monotonic()
                    signal.pthread_kill(threading.main_thread().ident, self.signum)


def _quiet_event_loop() -> None:
    """Drop the errors of the client tasks a stop leaves behind on the runner's event loop (jupyter_client's
    and nbclient's, reading a killed kernel's closed sockets): echoes of the stop, logged as tracebacks."""
    from jupyter_core.utils import ensure_event_loop

    ensure_event_loop().set_exception_handler(lambda loop, context: None)


def _after_stage_cell(stage: Stage, on_ready: Callable[[], None]):
    """An nbclient ``on_cell_executed`` hook: ``on_ready()`` once, after the stage's own cell ran without error."""
    call = f"{stage.name}.run("
    called = []

    def hook(cell, execute_reply=None, **_) -> None:
        ok = (execute_reply or {}).get("content", {}).get("status") == "ok"
        if ok and not called and call in cell.source:
            called.append(True)
            on_ready()

    return hook


def execute_stage(
    stage: Stage,
    params: dict,
    run_dir: Path,
    kernel: str,
    progress: bool,
    stopper: Stopper | None = None,
    on_ready: Callable[[], None] | None = None,
) -> StageResult:
    """Run the stage's notebook with papermill in a fresh kernel: one started ahead for it
    (``Stopper.start_ahead``, while the stage before it ran) or one started first (see ``start_kernel``).

    ``on_ready`` is called once the stage's own cell (the one that calls ``<stage>.run(``) has ended well: the
    pipeline starts the next stage's kernel then, so that its start overlaps this stage's remaining cells (its
    report, its charts) and neither this kernel's start nor the stage's own work, whose cores it would take. The
    stage's seconds count from this call: a kernel started ahead is counted in the stage during which it started.
    """
    stopper = stopper or Stopper()
    output = run_dir / stage.notebook
    t0 = time.perf_counter()
    km, started = stopper.claim_ahead(stage.name)
    ahead = None if started is None else round(t0 - started, 3)
    with stopper.stage(km or notebooks.kernel_manager(kernel)) as km:
        if ahead is None:
            with stopper.holding():
                _start_stage_kernel(km, stage, params)
        papermill = notebooks.import_papermill()  # meanwhile the kernel starts (a process imports it once)
        stopper.check()
        hooks = {"on_cell_executed": _after_stage_cell(stage, on_ready)} if on_ready else {}
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
                **hooks,
            )
        except papermill.PapermillExecutionError as exc:
            stopper.check()
            error = f"{exc.ename}: {str(exc.evalue).strip().splitlines()[0] if str(exc.evalue).strip() else ''}"
            reason = "user-error" if exc.ename == "UserError" else "cell-error"
            seconds = round(time.perf_counter() - t0, 3)
            return StageResult(stage.name, "failed", seconds, str(output), reason, error, ahead)
        except Exception:
            stopper.check()  # the kernel was killed by the stopper: papermill's error is only its echo
            raise
    return StageResult(stage.name, "ok", round(time.perf_counter() - t0, 3), str(output), kernel_started_ahead=ahead)
