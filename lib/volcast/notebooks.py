"""The stage notebooks as files and kernels: their parameters, the kernel that runs them, and their upkeep.

- ``notebook_parameters``: a notebook's ``parameters`` cell, read the way papermill reads it.
- ``ensure_kernel`` / ``start_kernel``: a kernelspec for *this* interpreter and a kernel started ahead of
  papermill with the notebook's imports (the pipeline runs each stage in one).
- ``sync_notebooks`` / ``refresh_notebooks``: each ``X.ipynb`` is a Jupytext pair with its ``py:percent``
  twin ``X.py`` (``notebooks/jupytext.toml``); sync brings a pair in step, refresh re-executes the
  committed notebooks to store the outputs nbval compares.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import config, storage
from .config import Layout
from .errors import UserError

LIBRARY_DIR = Path(__file__).resolve().parent
KERNEL_NAME = "volcast-python"
DEMO_OUTPUT_DIR = "../outputs/demo"  # the committed notebooks' output_dir, relative to notebooks/


def import_papermill():
    """papermill, imported without the 0.7 s that jsonschema's optional IRI checker costs.

    papermill -> nbformat -> jsonschema imports ``rfc3987_syntax`` when it is installed (it is, through
    jupyter-events' ``jsonschema[format-nongpl]``), and that module compiles about 35 Lark grammars at
    import (python-jsonschema/jsonschema#1428). No notebook schema uses the ``iri`` format it checks, so
    marking the module absent before the first import only skips that checker, in every
    ``run_pipeline.py`` process.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # None in sys.modules = "not installed"
    import papermill

    return papermill


# ---------------------------------------------------------------------------------------------
# Parameters


def notebook_parameters(path: str | os.PathLike) -> dict[str, Any]:
    """A notebook's declared parameters and their default values (papermill's own reading)."""
    path = Path(path)
    return dict(_declared_parameters(str(path), path.stat().st_mtime_ns))


@functools.cache
def _declared_parameters(path: str, mtime_ns: int) -> tuple[tuple[str, Any], ...]:
    # Read once per notebook version: --param checks and every stage's injection ask again.
    papermill = import_papermill()
    return tuple((name, literal(spec["default"])) for name, spec in papermill.inspect_notebook(path).items())


def literal(text: str) -> Any:
    """A Python literal's value, or the text itself when it is not one."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# ---------------------------------------------------------------------------------------------
# Kernels


def ensure_kernel(layout: Layout) -> str:
    """A kernelspec that runs the notebooks on *this* interpreter, whatever is registered elsewhere.

    Works in a fresh virtualenv with no ``ipykernel install``: the spec lives in the output dir and
    is put first on JUPYTER_PATH for this process and its children.
    """
    root = layout.output_dir / ".jupyter"
    spec_dir = root / "kernels" / KERNEL_NAME
    spec = {
        "argv": [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--IPKernelApp.log_level=ERROR",
        ],  # no loopback-TCP notice on every stage
        "display_name": f"volcast ({sys.executable})",
        "language": "python",
        "env": {"PYTHONPATH": os.pathsep.join(filter(None, [str(LIBRARY_DIR.parent), os.environ.get("PYTHONPATH")]))},
        "metadata": {"debugger": False},
    }
    storage.atomic_write_json(spec_dir / "kernel.json", spec)
    paths = [str(root)] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != str(root)]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(paths)
    return KERNEL_NAME


def kernel_manager(kernel: str):
    """A kernel manager, not started yet, that closes the clients it handed out when it shuts down."""
    from jupyter_client.manager import KernelManager

    class _KernelManager(KernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.handed_out = []
            self.client_factory = _ready_client_class()

        def client(self, **kwargs):
            early = self.__dict__.pop("early", None)
            kc = early if early is not None and not kwargs else super().client(**kwargs)
            if kc is not early:
                self.handed_out.append(kc)
            return kc

        def listen_early(self) -> None:
            """Connect now the IOPub channel of the client that ``client()`` hands out next (nbclient's). A client
            that connects only as the notebook starts can miss the kernel's first status message, and its
            ``wait_for_ready`` then waits 0.2 s for IOPub before asking again."""
            kc = super().client()
            kc.start_channels(shell=False, stdin=False, hb=False, control=False)
            self.handed_out.append(kc)  # stopped at shut_down, handed out or not
            self.early = kc

        def kill_group(self) -> None:
            """Kill the kernel and every process it started, at once (safe to call from a signal handler).

            jupyter_client starts the kernel in its own session, so its process group holds it and its
            workers; descendants that left the group are killed by pid. Every output a stage writes is
            published atomically, so a kill never leaves a partial one where readers look.
            """
            import psutil

            provisioner = getattr(self, "provisioner", None)
            pid, pgid = getattr(provisioner, "pid", None), getattr(provisioner, "pgid", None)
            if not pid:
                return
            try:
                procs = [psutil.Process(pid)]
                procs += procs[0].children(recursive=True)
            except psutil.Error:
                procs = []
            if pgid and pgid != os.getpgrp():
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.kill()

        def shut_down(self) -> None:
            for kc in self.handed_out:
                kc.stop_channels()
            if self.has_kernel:
                # Every output is written (atomically) before the last cell ends; a graceful shutdown
                # only waits for the kernel's exit hooks. Killed and reaped here first: jupyter_client's
                # own kill polls for the exit every 0.1 s, a tenth of a second per stage.
                self.kill_group()
                process = getattr(getattr(self, "provisioner", None), "process", None)
                if process is not None:
                    with contextlib.suppress(Exception):
                        process.wait(timeout=5)
                self.shutdown_kernel(now=True)

    return _KernelManager(kernel_name=kernel)


@functools.cache
def _ready_client_class():
    """jupyter_client's blocking client, whose ``wait_for_ready`` does not end by waiting until IOPub has been
    quiet for 0.2 s (a fixed 0.2 s per notebook): it drains what IOPub holds and returns. nbclient and papermill
    match every output to the request it answers, so a status message of the readiness check arriving later is
    ignored."""
    import time
    from queue import Empty

    from jupyter_client.blocking import BlockingKernelClient
    from jupyter_core.utils import ensure_async, run_sync

    # It reuses jupyter_client's own steps; a release without them gets jupyter_client's own wait back.
    if not all(hasattr(BlockingKernelClient, name) for name in ("_async_is_alive", "_handle_kernel_info_reply")):
        return BlockingKernelClient

    class ReadyClient(BlockingKernelClient):
        async def _async_wait_for_ready(self, timeout: float | None = None) -> None:
            # jupyter_client's check (a kernel_info reply on shell, then a message on IOPub: both connected)
            deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
            while True:
                self.kernel_info()
                try:
                    reply = await ensure_async(self.shell_channel.get_msg(timeout=1))
                except Empty:
                    reply = None
                if reply is not None and reply["msg_type"] == "kernel_info_reply":
                    try:
                        await ensure_async(self.iopub_channel.get_msg(timeout=0.2))
                    except Empty:
                        pass
                    else:
                        self._handle_kernel_info_reply(reply)
                        break
                if not await self._async_is_alive():
                    raise RuntimeError("Kernel died before replying to kernel_info")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kernel didn't respond in {timeout} seconds")
            while True:  # what IOPub holds now, without waiting for more
                try:
                    await ensure_async(self.iopub_channel.get_msg(timeout=0))
                except Empty:
                    break

        wait_for_ready = run_sync(_async_wait_for_ready)

    return ReadyClient


def start_kernel(km, modules: list[str], warm_up: str = "") -> None:
    """Start ``km``'s kernel now, importing ``modules`` (after running ``warm_up``), in notebooks/.

    Started before the runner imports papermill and reads the notebook, the kernel's start-up and
    imports overlap them. The imports leave no names behind: the notebook still imports what it uses.
    nbclient, handed a running kernel, neither starts nor stops it; the caller does (``shut_down``).
    """
    roots = sorted({m.split(".")[0] for m in modules})
    preload = f"{warm_up}import {', '.join(modules)}; del {', '.join(roots)}"
    km.start_kernel(
        cwd=str(config.NOTEBOOKS_DIR),
        extra_arguments=[
            "--HistoryManager.hist_file=:memory:",  # as nbclient starts kernels
            f"--IPKernelApp.exec_lines={[preload]!r}",
        ],
    )
    if hasattr(km, "listen_early"):
        km.listen_early()


# ---------------------------------------------------------------------------------------------
# Jupytext pairs and stored outputs


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


def check_pair(ipynb: str | os.PathLike) -> None:
    """Refuse to run a notebook whose ``py:percent`` twin was edited and not synced (the run would ignore
    the edit). Cheap when the twin is not newer than the .ipynb, as after a sync or a save in JupyterLab."""
    ipynb = Path(ipynb)
    twin = ipynb.with_suffix(".py")
    if not twin.exists() or twin.stat().st_mtime <= ipynb.stat().st_mtime + 1:
        return
    import jupytext

    def cells(path):
        return [(c.cell_type, c.source) for c in jupytext.read(path).cells]

    if cells(twin) != cells(ipynb):
        raise UserError(
            f"{twin} was edited after {ipynb.name} and differs from it; run "
            "`python run_pipeline.py sync-notebooks` (or save it in JupyterLab), then run again"
        )


def refresh_notebooks(
    names: list[str] | None = None, say: Callable[[str], None] = print, notebooks_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Re-execute the committed notebooks in place with their default (demo) parameters.

    This refreshes the stored outputs that nbval compares, after an intended change. Each pair is synced
    first (an edit made on the .py side is what runs) and after (the twin is rewritten, so it is not older
    than its .ipynb). nbclient (not papermill) so the committed notebooks carry no injected cell or run
    metadata. The notebooks run in their folder, so their ``output_dir`` is ``../outputs/demo`` from it.
    """
    import nbclient
    import nbformat

    from .pipeline import DAG

    folder = Path(notebooks_dir or config.NOTEBOOKS_DIR).resolve()
    layout = Layout.at(folder / DEMO_OUTPUT_DIR)
    kernel = ensure_kernel(layout)
    order = [stage.notebook for stage in DAG] + [config.DASHBOARD_NOTEBOOK]
    paths = sync_notebooks(names or order, notebooks_dir=folder)
    for path in paths:
        say(f"refreshing {path.name}")
        nb = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(
            nb, kernel_name=kernel, timeout=1800, resources={"metadata": {"path": str(folder)}}
        ).execute()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        storage.atomic_write_text(path, nbformat.writes(nb) + "\n")
        sync_notebooks([path.name], notebooks_dir=folder)
        path.with_suffix(".py").touch()  # the twin is current: not older than the .ipynb just written
    shutil.rmtree(folder / "catboost_info", ignore_errors=True)
    return paths
