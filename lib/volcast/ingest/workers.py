"""The process pool: partition tasks on forkserver workers (or a dask cluster), with a progress bar over files;
local workers end with the process that started them."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue as queue_mod
import select
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

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
    worker, which the pipeline overlaps with the kernel's start by calling this ahead.
    """
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["volcast.ingest", "pandas"])
    forkserver.ensure_running()
    return ctx


def _execute(tasks: list[_Task], jobs: int, n_files: int, executor: str = "local", scheduler: str = "") -> list[dict]:
    """Run partition tasks (biggest first) with a progress bar over files: on ``jobs`` forkserver
    processes, or on a dask cluster (``volcast.executor``; the bar then moves a partition at a time)."""
    from tqdm import tqdm  # text bar: executed notebooks keep a line, not a widget

    from ..executor import LOCAL, map_tasks, resolve

    executor, scheduler = resolve(executor, scheduler)
    tasks = sorted(tasks, key=lambda t: -t.bytes)
    out: list[dict] = []
    bar = tqdm(total=n_files, desc="ingest", unit="file", disable=n_files == 0, mininterval=0.5)
    progress = None

    def local_pool(workers: int) -> ProcessPoolExecutor:
        nonlocal progress
        ctx = start_worker_server()
        progress = ctx.Queue()
        return ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(progress, os.getpid())
        )

    def on_done(task: _Task, entries: list[dict]) -> None:
        out.extend(entries)
        if progress is None:  # inline or dask: no per-file messages, count the task's files
            bar.update(len(task.parse))

    try:
        map_tasks(
            _partition_task,
            tasks,
            jobs=jobs,
            executor=executor,
            scheduler=scheduler,
            local_pool=local_pool,
            on_done=on_done,
            name="ingest",
            poll=lambda: progress is not None and _drain(progress, bar),
        )
        if executor == LOCAL and progress is not None:
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
