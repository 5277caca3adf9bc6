"""``voila_app.FreshPool`` on its own: which pre-heated kernels it drops when ``models/LATEST`` changes.

The real Voilà server with a real pool is exercised in tests/test_serve_voila.py; here the mixin sits on a
stand-in for the few members of Voilà's kernel manager it uses (``_pools``, ``_initialize``,
``fill_if_needed``, ``shutdown_kernel``, ``get_pool_size``), so each case (a kernel heated on the current
model, on a replaced one, one still starting, one whose start failed) is checked directly."""

from __future__ import annotations

import asyncio
import logging

import pytest

from volcast.serve.voila_app import FreshPool


class _StandInManager:
    """The members of Voilà's ``VoilaKernelManager`` that FreshPool touches, recording what it asks."""

    def __init__(self, **kwargs):
        self._pools: dict[str, list] = {"dashboard.ipynb": []}
        self.log = logging.getLogger("test-fresh-pool")
        self.kernels: set[str] = set()
        self.refilled: list[str] = []
        self.shut_down: list[str] = []

    async def _initialize(self, notebook_path, kernel_id=None, **kwargs):
        kernel = f"kernel-{len(self.kernels)}"
        self.kernels.add(kernel)
        rendering = asyncio.ensure_future(asyncio.sleep(3600))  # the notebook's rendering, still running
        return {"kernel_id": kernel, "task": rendering}

    def fill_if_needed(self, delay=None, notebook_name=None, **kwargs):
        self.refilled.append(notebook_name)

    async def shutdown_kernel(self, kernel_id, now=False):
        self.shut_down.append(kernel_id)
        self.kernels.discard(kernel_id)

    def __contains__(self, kernel_id):
        return kernel_id in self.kernels

    def get_pool_size(self, notebook_name):
        return len(self._pools[notebook_name])


class _Manager(FreshPool, _StandInManager):
    pass


@pytest.fixture
def latest(tmp_path, monkeypatch):
    """Write ``models/LATEST`` of an output dir the pool reads through VOLCAST_OUTPUT_DIR."""
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setenv("VOLCAST_OUTPUT_DIR", str(tmp_path))

    def write(model_id: str) -> None:
        (models / "LATEST").write_text(model_id + "\n", encoding="utf-8")

    return write


async def _heat(manager) -> asyncio.Task:
    """One pool kernel the way Voilà makes it: a task running ``_initialize`` without a kernel id."""
    task = asyncio.ensure_future(manager._initialize("dashboard.ipynb"))
    manager._pools["dashboard.ipynb"].append(task)
    await task
    return task


def _run_with_manager(scenario) -> None:
    """Run ``scenario(manager)`` in a fresh event loop with a new pool manager, its periodic check stopped after."""

    async def main():
        manager = _Manager()
        try:
            await scenario(manager)
        finally:
            manager._pool_check.stop()

    asyncio.run(main())


async def _settle():
    for _ in range(5):  # the done-callback, then the shutdown coroutine it schedules
        await asyncio.sleep(0)


def test_kernels_heated_on_a_replaced_model_are_dropped_shut_down_and_refilled(latest):
    async def scenario(manager):
        latest("model-a")
        old = await _heat(manager)
        assert manager.drop_stale_kernels() == 0  # LATEST unchanged: the kernel is served
        assert manager.get_pool_size("dashboard.ipynb") == 1 and manager.refilled == []

        latest("model-b")
        fresh = await _heat(manager)
        # A page request asks the pool size first: only the kernel heated on model-b remains.
        assert manager.get_pool_size("dashboard.ipynb") == 1
        assert manager._pools["dashboard.ipynb"] == [fresh]
        assert manager.refilled == ["dashboard.ipynb"]
        await _settle()
        assert manager.shut_down == [old.result()["kernel_id"]]
        assert old.result()["task"].cancelled()  # its notebook rendering is stopped too
        assert manager.drop_stale_kernels() == 0

    _run_with_manager(scenario)


def test_a_kernel_still_starting_is_kept_and_a_failed_start_is_dropped(latest):
    async def scenario(manager):
        latest("model-a")
        not_started = asyncio.get_running_loop().create_future()  # a pool task that has not run yet
        manager._pools["dashboard.ipynb"].append(not_started)
        assert manager.drop_stale_kernels() == 0  # it will read LATEST when it starts

        async def failing_start():
            manager._heated_on[asyncio.current_task()] = "model-a"
            raise RuntimeError("kernel died while starting")

        failed = asyncio.ensure_future(failing_start())
        manager._pools["dashboard.ipynb"].append(failed)
        with pytest.raises(RuntimeError):
            await failed
        assert manager.drop_stale_kernels() == 1
        assert manager._pools["dashboard.ipynb"] == [not_started]
        await _settle()
        assert manager.shut_down == []  # nothing was started, nothing to shut down

    _run_with_manager(scenario)


def test_a_kernel_the_culler_already_removed_is_not_shut_down_twice(latest):
    async def scenario(manager):
        latest("model-a")
        task = await _heat(manager)
        manager.kernels.discard(task.result()["kernel_id"])  # gone already
        latest("model-b")
        assert manager.drop_stale_kernels() == 1
        await _settle()
        assert manager.shut_down == []

    _run_with_manager(scenario)
