"""The dashboard process (issue 14): a pre-heated kernel serves the first page; kernels of pages nobody
has open are culled, so page loads cannot pile up kernels (the pool stays); Voilà's /logout (403) and
malformed template URLs (404) no longer answer 500."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

from dashboard_helpers import kernel_id, kernels_of, wait_for_kernels
from serve_helpers import ServeProcess, tiny_output  # noqa: F401
from volcast.serve.launch import DASHBOARD_POOL

PAGE_TIMEOUT = 180  # a page load starts a kernel and runs the dashboard notebook: slow on a busy CI box


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=PAGE_TIMEOUT) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def page(url: str) -> tuple[int, str]:
    """(status, id of the kernel the page was given: Voilà writes it into the page's config)."""
    with urllib.request.urlopen(url, timeout=PAGE_TIMEOUT) as resp:
        body = resp.read().decode()
        return resp.status, re.search(r'"kernelId": "([0-9a-f-]+)"', body).group(1)


def test_page_loads_are_served_pre_heated_and_leave_only_the_pool_once_culled(tiny_output):
    assert DASHBOARD_POOL == 1
    served = ServeProcess(tiny_output, dashboard=True, dashboard_kernel_idle=4, dashboard_cull_interval=1)
    try:
        pool = wait_for_kernels(served, DASHBOARD_POOL)  # heated at start, before any page is asked for
        assert len(pool) == 1
        status, first = page(served.dashboard_url + "/")
        assert status == 200 and first == kernel_id(pool[0])  # the first page got the pre-heated kernel
        given, most = {first}, 0
        for _ in range(19):  # what curl or closed browser tabs leave: kernels with no websocket
            status, kid = page(served.dashboard_url + "/")
            assert status == 200
            given.add(kid)
            alive = kernels_of(served.proc)
            most = max(most, len(alive))
        assert len(given) == 20  # a kernel per page, never one shared by two pages
        assert most <= 6, most  # culled as they go: the count does not grow with the loads
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = kernels_of(served.proc)
            if len(left) == DASHBOARD_POOL and kernel_id(left[0]) not in given:
                break
            time.sleep(0.5)
        left = kernels_of(served.proc)
        # Every page's kernel culled; what is left is the pool, heated again for the next page.
        assert [kernel_id(k) not in given for k in left] == [True] * DASHBOARD_POOL
        assert page(served.dashboard_url + "/")[0] == 200  # and the next page load still works
        for path in ("/voila/templates/", "/voila/templates/x", "/voila/templates/lab/nope/x"):
            assert status_of(served.dashboard_url + path) == 404, path
        assert status_of(served.dashboard_url + "/logout") in (403, 404)  # no logout handler left
    finally:
        assert served.stop() == 0


def test_without_a_pool_page_loads_leave_no_kernels_once_culled(tiny_output):
    served = ServeProcess(
        tiny_output, dashboard=True, dashboard_kernel_idle=4, dashboard_cull_interval=1, dashboard_pool=0
    )
    try:
        assert kernels_of(served.proc) == []  # nothing heated
        loads = 3
        for _ in range(loads):
            assert status_of(served.dashboard_url + "/") == 200
        assert 1 <= len(kernels_of(served.proc)) <= loads
        assert wait_for_kernels(served, 0, timeout=60) == []
    finally:
        assert served.stop() == 0
