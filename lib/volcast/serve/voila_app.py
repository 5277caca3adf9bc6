"""Voilà as ``serve`` runs it (``python -m volcast.serve.voila_app NOTEBOOK ...``): Voilà's own app with
two of its URLs made harmless, and a pool of pre-heated kernels that never shows a replaced model.

* ``/logout`` (volcast's dashboard has no login) and template paths that are not
  ``<template>/static/<file>`` answered 500 from an exception inside Voilà; both are now 404.
* Pre-heated kernels (``--VoilaConfiguration.preheat_kernel=True``): Voilà keeps ``default_pool_size``
  kernels that have already run the dashboard notebook, so a page opens without waiting for a kernel
  start, the imports and the model load. Such a kernel shows the model that ``models/LATEST`` named
  when it ran the notebook. ``FreshPool`` remembers that model id per pooled kernel and, when LATEST has
  changed since, drops the kernel instead of serving it (checked on every page request and every few
  seconds), then heats a new one: a page never opens on a model that was replaced before the request.

Kernel culling is configured on the command line (``launch.voila_command``); Voilà never culls a
pooled kernel, only kernels that served a page.
"""

from __future__ import annotations

import asyncio
import os
import weakref

import tornado.ioloop
import tornado.web
import voila.app
from voila.app import Voila
from voila.static_file_handler import TemplateStaticFileHandler

from volcast.config import Layout

POOL_CHECK_SECONDS = 5.0


class _TemplateFiles(TemplateStaticFileHandler):
    def parse_url_path(self, path: str) -> str:
        parts = path.split("/", 2)
        if len(parts) < 3 or parts[1] != "static" or not parts[2]:
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(path)


def current_model_id(output_dir: str | os.PathLike | None = None) -> str | None:
    """What ``models/LATEST`` names now (None while there is none or it cannot be read)."""
    output_dir = output_dir or os.environ.get("VOLCAST_OUTPUT_DIR")
    if not output_dir:
        return None
    try:
        return Layout.at(output_dir).latest_file.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class FreshPool:
    """Mixed into Voilà's ``VoilaKernelManager``: pooled kernels heated on a model LATEST no longer names
    are shut down instead of being served, and the pool is filled again."""

    def __init__(self, **kwargs):
        # Model id read when each pool task started heating (its kernel runs the notebook after that).
        self._heated_on: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        super().__init__(**kwargs)
        self._pool_check = tornado.ioloop.PeriodicCallback(self.drop_stale_kernels, POOL_CHECK_SECONDS * 1000)
        self._pool_check.start()

    async def _initialize(self, notebook_path: str, kernel_id: str | None = None, **kwargs):
        task = asyncio.current_task()
        if task is not None and kernel_id is None:  # a pool kernel (a restart passes its kernel id)
            self._heated_on[task] = current_model_id()
        return await super()._initialize(notebook_path, kernel_id, **kwargs)

    def _is_stale(self, task) -> bool:
        if task not in self._heated_on:
            return False  # not started yet: it will read LATEST when it does
        if task.done() and (task.cancelled() or task.exception() is not None):
            return True
        return self._heated_on[task] != current_model_id()

    def drop_stale_kernels(self) -> int:
        """Take stale kernels out of every pool, shut them down, refill; returns how many were dropped."""
        dropped = 0
        for name, pool in list(self._pools.items()):
            stale = [task for task in pool if self._is_stale(task)]
            for task in stale:
                pool.remove(task)
                task.add_done_callback(self._shut_down_heated)
                dropped += 1
            if stale:
                self.log.info("volcast: %d pre-heated kernel(s) of %s were on a replaced model", len(stale), name)
                self.fill_if_needed(delay=0, notebook_name=name)
        return dropped

    def _shut_down_heated(self, task) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        content = task.result()
        content["task"].cancel()  # its rendering of the notebook, if still running
        asyncio.ensure_future(self._shut_down(content["kernel_id"]))

    async def _shut_down(self, kernel_id: str) -> None:
        if kernel_id in self:  # the culler may have been first: out of the pool, it is an idle kernel
            try:
                await self.shutdown_kernel(kernel_id, now=True)
            except KeyError:
                pass

    def get_pool_size(self, notebook_name: str) -> int:
        # Voilà's page handler asks this right before it takes the first pooled kernel.
        self.drop_stale_kernels()
        return super().get_pool_size(notebook_name)


_voila_factory = voila.app.voila_kernel_manager_factory


def _factory_with_fresh_pool(base_class, preheat_kernel, default_pool_size, page_config_hook=None):
    cls = _voila_factory(base_class, preheat_kernel, default_pool_size, page_config_hook=page_config_hook)
    if not preheat_kernel:
        return cls
    return type("VolcastKernelManager", (FreshPool, cls), {})


class DashboardVoila(Voila):
    def init_handlers(self) -> list:
        handlers = []
        for spec in super().init_handlers():
            pattern, handler = spec[0], spec[1]
            if str(pattern).rstrip("$").endswith("/logout"):
                continue  # no login, so nothing to log out of
            if handler is TemplateStaticFileHandler:
                spec = (pattern, _TemplateFiles, *spec[2:])
            handlers.append(spec)
        return handlers


if __name__ == "__main__":
    voila.app.voila_kernel_manager_factory = _factory_with_fresh_pool
    DashboardVoila.launch_instance()
