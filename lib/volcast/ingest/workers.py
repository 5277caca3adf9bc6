"""The process pool: partition tasks on forkserver workers, with a progress bar over files."""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue as queue_mod
import select
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from . import task as task_mod
from .task import _partition_task, _Task

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_worker(progress_queue, owner: int) -> None:
    task_mod._PROGRESS = progress_queue
    _exit_with(owner)


def _exit_with(owner: int) -> None:
    """End this worker as soon as the process running the stage (``owner``) ends, however it ended
    (SIGKILL included, when no cleanup runs): the kernel sends us SIGKILL when our parent, the forkserver,
    dies (PR_SET_PDEATHSIG), and a thread waits on the owner's pidfd, readable once it has exited."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the thread below still watches
        pass
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:
        os._exit(1)
    except (OSError, AttributeError):
        pidfd = None

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            while True:
                try:
                    os.kill(owner, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="volcast-ingest-owner-watch", daemon=True).start()


def start_worker_server():
    """Start (once per process) the server ``run``'s worker processes are forked from; return its context.

    forkserver: workers start from a clean process, not a fork of a threaded parent (pyarrow). The
    server imports this module and pandas (pyarrow's to_numpy imports it) before it forks the first
    worker: about 0.5 s, which the pipeline overlaps with the kernel's start by calling this ahead.
    """
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["volcast.ingest", "pandas"])
    forkserver.ensure_running()
    return ctx


def _execute(tasks: list[_Task], jobs: int, n_files: int) -> list[dict]:
    """Run partition tasks on ``jobs`` processes (biggest first) with a progress bar over files."""
    from tqdm import tqdm  # text bar: executed notebooks keep a line, not a widget

    tasks = sorted(tasks, key=lambda t: -t.bytes)
    out: list[dict] = []
    bar = tqdm(total=n_files, desc="ingest", unit="file", disable=n_files == 0, mininterval=0.5)
    try:
        if jobs <= 1 or len(tasks) <= 1:
            for task in tasks:
                entries = _partition_task(task)
                bar.update(len(task.parse))
                out.extend(entries)
            return out
        ctx = start_worker_server()
        progress = ctx.Queue()
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx,
                                 initializer=_init_worker, initargs=(progress, os.getpid())) as pool:
            pending = {pool.submit(_partition_task, t) for t in tasks}
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress, bar)
                for fut in done:
                    out.extend(fut.result())
            _drain(progress, bar)
        return out
    finally:
        bar.n = n_files
        bar.refresh()
        bar.close()


def _drain(progress, bar) -> None:
    n = 0
    while True:
        try:
            n += progress.get_nowait()  # files done, sent per batch
        except queue_mod.Empty:
            break
    if n:
        bar.update(n)

