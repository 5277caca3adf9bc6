"""The dashboard process (issue 14): kernels of pages nobody has open are culled, so page loads cannot
pile up kernels; Voilà's /logout (403) and malformed template URLs (404) no longer answer 500."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import psutil

from serve_helpers import ServeProcess, tiny_output  # noqa: F401

PAGE_TIMEOUT = 180  # a page load starts a kernel and runs the dashboard notebook: slow on a busy CI box


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=PAGE_TIMEOUT) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def kernels_of(proc) -> list[psutil.Process]:
    """The ipykernel processes under ``serve()`` (Voila's kernels), and no one else's."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def test_page_loads_leave_no_kernels_once_culled_and_voila_urls_are_harmless(tiny_output):
    served = ServeProcess(tiny_output, dashboard=True, dashboard_kernel_idle=4, dashboard_cull_interval=1)
    try:
        loads = 3
        for _ in range(loads):  # what curl or a closed browser tab leaves: a kernel with no websocket
            assert status_of(served.dashboard_url + "/") == 200
        started = len(kernels_of(served.proc))
        assert 1 <= started <= loads
        deadline = time.monotonic() + 60
        while kernels_of(served.proc) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert kernels_of(served.proc) == []  # culled: memory does not grow with page loads
        assert status_of(served.dashboard_url + "/") == 200  # and the next page load still works
        for path in ("/voila/templates/", "/voila/templates/x", "/voila/templates/lab/nope/x"):
            assert status_of(served.dashboard_url + path) == 404, path
        assert status_of(served.dashboard_url + "/logout") in (403, 404)  # no logout handler left
    finally:
        assert served.stop() == 0
