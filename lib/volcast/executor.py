"""Where partition tasks run: local workers (the default) or a dask.distributed cluster.

One interface for the stages: ``map_tasks(fn, tasks, jobs=..., executor=..., scheduler=...)`` runs
``fn(task)`` for every task and hands each result to ``on_done`` as it completes. ``"local"`` uses the
pool the stage asks for (ingest: forkserver processes; features: threads); ``"dask"`` submits the same
functions to a ``distributed`` scheduler: the one at ``scheduler`` (or ``$VOLCAST_DASK_SCHEDULER``), or,
with neither, a ``LocalCluster`` of ``jobs`` worker processes started for the call. dask is imported only
when it is chosen, so a local run never loads it.

Tasks read and write files by path: on a cluster whose workers are other machines, the source and the
output directory must be on storage every worker sees at the same path (a shared filesystem).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, wait
from typing import Any

from .errors import UserError

LOCAL = "local"
DASK = "dask"
EXECUTORS = (LOCAL, DASK)
SCHEDULER_ENV = "VOLCAST_DASK_SCHEDULER"
CONNECT_TIMEOUT = "20s"


def resolve(executor: str | None, scheduler: str | None = None) -> tuple[str, str]:
    """``(executor, scheduler)`` as the stages take them, after the defaults.

    No executor named: dask when ``$VOLCAST_DASK_SCHEDULER`` is set, else local. A scheduler address
    implies dask; ``local`` with an address is a contradiction and an error.
    """
    env = os.environ.get(SCHEDULER_ENV, "").strip()
    scheduler = (scheduler or "").strip()
    name = (executor or "").strip().lower()
    if not name:
        name = DASK if (scheduler or env) else LOCAL
    if name not in EXECUTORS:
        raise UserError(f"executor {executor!r}: choose {' or '.join(EXECUTORS)}")
    if name == LOCAL:
        if scheduler:
            raise UserError(f"--scheduler {scheduler} needs --executor dask (the local executor has no scheduler)")
        return LOCAL, ""
    return DASK, scheduler or env


def map_tasks(
    fn: Callable[[Any], Any],
    tasks: Iterable[Any],
    *,
    jobs: int,
    executor: str = LOCAL,
    scheduler: str = "",
    local_pool: Callable[[int], Executor] | None = None,
    on_done: Callable[[Any, Any], None] | None = None,
    poll: Callable[[], None] | None = None,
    name: str = "volcast",
) -> list[Any]:
    """Run ``fn(task)`` for each task; return the results in completion order.

    ``on_done(task, result)`` is called in this process as each one completes; ``poll()`` about every
    0.2 s while local workers run (ingest drains its per-file progress there). Local: one task or
    ``jobs`` <= 1 runs inline, else ``local_pool(workers)`` runs them. A task's exception is raised here.
    """
    tasks = list(tasks)
    executor, scheduler = resolve(executor, scheduler)
    if executor == DASK:
        return _map_dask(fn, tasks, jobs, scheduler, on_done, name)
    results: list[Any] = []

    def done(task, result) -> None:
        results.append(result)
        if on_done is not None:
            on_done(task, result)

    if jobs <= 1 or len(tasks) <= 1 or local_pool is None:
        for task in tasks:
            done(task, fn(task))
        return results
    with local_pool(min(jobs, len(tasks))) as pool:
        pending = {pool.submit(fn, task): task for task in tasks}
        while pending:
            finished, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            if poll is not None:
                poll()
            for future in finished:
                done(pending.pop(future), future.result())
    return results


@contextlib.contextmanager
def dask_client(scheduler: str = "", n_workers: int = 2) -> Iterator[Any]:
    """A ``distributed.Client`` on ``scheduler``, or on a ``LocalCluster`` of ``n_workers`` processes
    started here (and closed on exit). A scheduler that cannot be reached is a one-line ``UserError``."""
    try:
        import distributed
    except ImportError:
        raise UserError("--executor dask needs dask.distributed: pip install 'volcast[dask]'") from None
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise UserError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
        try:
            yield client
        finally:
            client.close()
        return
    # One thread per worker process: the tasks are CPU-bound and hold their own buffers.
    with (
        distributed.LocalCluster(
            n_workers=max(1, n_workers), threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


def _map_dask(fn, tasks, jobs, scheduler, on_done, name) -> list[Any]:
    import distributed

    results: list[Any] = []
    if not tasks:
        return results
    with dask_client(scheduler, n_workers=jobs) as client:
        run = uuid.uuid4().hex[:8]
        # pure=False: two equal tasks are still two writes; keys name the stage for the dask dashboard.
        futures = {client.submit(fn, task, pure=False, key=f"{name}-{run}-{i}"): task for i, task in enumerate(tasks)}
        try:
            for future in distributed.as_completed(futures, loop=client.loop):
                result = future.result()
                results.append(result)
                if on_done is not None:
                    on_done(futures[future], result)
        finally:
            client.cancel(list(futures))
    return results


class RunCluster:
    """What a pipeline run hands its stages: nothing for local; for dask, the scheduler's address.

    With no address given, a ``LocalCluster`` of ``n_workers`` processes is started on first use (so a
    run whose stages are all skipped starts none), shared by the run's stages and closed by ``close()``.
    """

    def __init__(self, executor: str | None, scheduler: str | None, n_workers: int):
        self.executor, self.scheduler = resolve(executor, scheduler)
        self.n_workers = n_workers
        self._cluster = None

    def params(self) -> dict[str, str]:
        """The stage parameters that select this executor (none for the local default)."""
        if self.executor == LOCAL:
            return {}
        if not self.scheduler:
            try:
                import distributed
            except ImportError:
                raise UserError("--executor dask needs dask.distributed: pip install 'volcast[dask]'") from None
            self._cluster = distributed.LocalCluster(
                n_workers=max(1, self.n_workers), threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.scheduler = self._cluster.scheduler_address
        return {"executor": DASK, "scheduler": self.scheduler}

    def close(self) -> None:
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()
            self._cluster = None
