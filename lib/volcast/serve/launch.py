"""The ``serve`` command's processes: API workers sharing one port (SO_REUSEPORT, the kernel spreads
connections over them, one per core), the Voilà dashboard, readiness checks, and supervision that
stops everything on Ctrl-C / SIGTERM / SIGHUP or when a child dies."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from volcast.config import (
    DASHBOARD_NOTEBOOK,
    DEFAULT_API_PORT,
    DEFAULT_DASHBOARD_PORT,
    DEFAULT_HOST,
    NOTEBOOKS_DIR,
    PRICE_FEATURE,
    VOL_FEATURE,
    Layout,
    resolve_jobs,
)
from volcast.errors import UserError

from .validate import NO_MODEL_ERROR


def _port_in_use_error(what: str, host: str, port: int, flag: str) -> UserError:
    return UserError(
        f"{what} port {port} on {host} is already in use; stop what uses it or pass {flag} with another port"
    )


def bind_api_sockets(host: str, port: int, workers: int) -> list[socket.socket]:
    """One listening socket per worker, all on the same port with SO_REUSEPORT (kernel load-balancing)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Another process of ours may hold the port with SO_REUSEPORT too (bind would then succeed and
    # silently share it): refuse if anything answers on it.
    if port:
        try:
            with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), timeout=0.5):
                raise _port_in_use_error("API", host, port, "--api-port")
        except OSError:
            pass
    sockets: list[socket.socket] = []
    try:
        for _ in range(workers):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                sock.close()
                if err.errno == errno.EADDRINUSE:
                    raise _port_in_use_error("API", host, port, "--api-port") from None
                raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None
            sock.listen(1024)
            sock.set_inheritable(True)
            sockets.append(sock)
            port = sock.getsockname()[1]  # port 0: every further socket takes the one chosen
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _free_port(host: str, port: int, what: str, flag: str) -> int:
    """Check ``port`` is free (or pick one for 0) by binding it briefly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As Voila (tornado) binds: connections left in TIME_WAIT by a server stopped a moment ago
        # do not make the port "in use"; a socket listening on it still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise _port_in_use_error(what, host, port, flag) from None
            raise UserError(f"cannot listen on {host}:{port}: {err.strerror}") from None
        return sock.getsockname()[1]


def _wait_ready(
    host: str, port: int, proc: subprocess.Popen, timeout: float, http_path: str | None, stop: threading.Event
) -> bool:
    """Wait until ``port`` accepts connections (and, with ``http_path``, answers any HTTP status)."""
    import http.client

    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if proc.poll() is not None:
            return False
        try:
            if http_path is None:
                with socket.create_connection((host, port), timeout=0.5):
                    return True
            # The API's listening sockets exist before its workers run: wait for an actual answer.
            conn = http.client.HTTPConnection(host, port, timeout=2)
            try:
                conn.request("GET", http_path)
                conn.getresponse().read()
                return True
            finally:
                conn.close()
        except OSError:
            time.sleep(0.1)
    return False


def _child_env(output_dir: Path) -> dict:
    env = dict(os.environ)
    env["VOLCAST_OUTPUT_DIR"] = str(output_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_api_workers(output_dir: Path, host: str, port: int, workers: int) -> tuple[list[subprocess.Popen], int]:
    """Start ``workers`` API processes sharing ``host:port``; returns them and the port."""
    sockets = bind_api_sockets(host, port, workers)
    port = sockets[0].getsockname()[1]
    procs = []
    try:
        for sock in sockets:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "from volcast.serve.worker import _worker_main; _worker_main()",
                        "--fd",
                        str(sock.fileno()),
                        "--output-dir",
                        str(output_dir),
                    ],
                    pass_fds=(sock.fileno(),),
                    env=_child_env(output_dir),
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C goes to the supervisor, which stops us in order
                )
            )
    except BaseException:
        stop_processes(procs)
        raise
    finally:
        for sock in sockets:
            sock.close()  # the workers hold their own copies
    return procs, port


# Each dashboard page gets its own kernel (~250 MB). One whose page is closed (no websocket left) is
# shut down after this many idle seconds, checked every DASHBOARD_CULL_INTERVAL; an open page keeps its
# kernel however long it idles. DASHBOARD_POOL kernels wait pre-heated (the notebook already run), so a
# page opens without a kernel start; voila_app.FreshPool replaces one heated on a model LATEST no longer
# names. Pooled kernels are never culled: they are the pool.
DASHBOARD_KERNEL_IDLE = 180
DASHBOARD_CULL_INTERVAL = 30
DASHBOARD_POOL = 1


def voila_command(
    port: int,
    host: str = DEFAULT_HOST,
    notebook: Path | None = None,
    *,
    kernel_idle: int = DASHBOARD_KERNEL_IDLE,
    cull_interval: int = DASHBOARD_CULL_INTERVAL,
    pool: int = DASHBOARD_POOL,
) -> list[str]:
    notebook = notebook or NOTEBOOKS_DIR / DASHBOARD_NOTEBOOK
    return [
        sys.executable,
        "-m",
        "volcast.serve.voila_app",  # Voila, with /logout and malformed template paths answering 404
        str(notebook),
        f"--port={port}",
        "--no-browser",
        f"--Voila.ip={host}",
        "--Voila.port_retries=0",  # fail loudly rather than moving to another port
        "--Voila.log_level=WARN",
        "--show_tracebacks=False",
        "--strip_sources=True",
        f"--MappingKernelManager.cull_idle_timeout={int(kernel_idle)}",
        f"--MappingKernelManager.cull_interval={int(cull_interval)}",
        "--MappingKernelManager.cull_connected=False",  # never cull a kernel whose page is open
        f"--VoilaConfiguration.preheat_kernel={pool > 0}",
        f"--VoilaConfiguration.default_pool_size={max(int(pool), 0)}",
    ]


# Runs Voila in place of a small Python process that first asks Linux to send it SIGTERM when its parent
# (the supervisor) dies: a supervisor killed with SIGKILL cannot stop it, and an orphaned Voila would keep
# the dashboard port. (The API workers watch their parent themselves.) Elsewhere Voila is run as is.
_VOILA_GUARD = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
if sys.platform.startswith("linux"):
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def start_dashboard(
    output_dir: Path,
    host: str,
    port: int,
    *,
    kernel_idle: int = DASHBOARD_KERNEL_IDLE,
    cull_interval: int = DASHBOARD_CULL_INTERVAL,
    pool: int = DASHBOARD_POOL,
) -> subprocess.Popen:
    command = voila_command(port, host, kernel_idle=kernel_idle, cull_interval=cull_interval, pool=pool)
    return subprocess.Popen(
        [command[0], "-c", _VOILA_GUARD, str(os.getpid()), *command[1:]],
        cwd=str(NOTEBOOKS_DIR),
        env=_child_env(output_dir),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_processes(procs: Sequence[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM each process and its descendants (Voilà's kernels), then SIGKILL what is left."""
    import psutil

    family: list[psutil.Process] = []
    for proc in procs:
        try:
            parent = psutil.Process(proc.pid)
            family.extend(parent.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for child in family:  # kernels Voilà did not shut down itself
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=max(0.5, deadline - time.monotonic()))
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def serve(
    output_dir: str | os.PathLike | None = None,
    host: str = DEFAULT_HOST,
    api_port: int = DEFAULT_API_PORT,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
    *,
    api_workers: int = 0,
    dashboard: bool = True,
    startup_timeout: float = 120.0,
    dashboard_kernel_idle: int = DASHBOARD_KERNEL_IDLE,
    dashboard_cull_interval: int = DASHBOARD_CULL_INTERVAL,
    dashboard_pool: int = DASHBOARD_POOL,
) -> int:
    """Run the JSON API (``api_workers`` processes; 0 = one per core) and the Voilà dashboard.

    Prints both URLs, then waits; Ctrl-C, SIGTERM or SIGHUP (the terminal closed) stops both and
    returns 0. If a child dies on its own, the rest are stopped and 1 is returned. Port 0 picks a free
    port (printed). A dashboard kernel whose page is closed is shut down after ``dashboard_kernel_idle``
    idle seconds (checked every ``dashboard_cull_interval``); ``dashboard_pool`` kernels wait pre-heated
    (0: none, every page starts its own).
    """
    from volcast import remote

    sync = None
    if remote.is_remote(output_dir):
        # The API workers follow models/LATEST on the store themselves; the dashboard reads a working copy
        # that this process keeps in step.
        sync = remote.Sync(remote.Remote(output_dir))
        sync.once()
        if sync.error:
            print(
                f"volcast serve: {sync.error}; serving the working copy {sync.remote.mirror} meanwhile", file=sys.stderr
            )
        sync.start()
    layout = Layout.at(sync.remote.mirror if sync else output_dir)
    workers = resolve_jobs(api_workers)
    stop_requested = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        stop_signals = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        for sig in stop_signals:
            previous[sig] = signal.signal(sig, lambda *_: stop_requested.set())
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        if dashboard:
            dashboard_port = _free_port(host, dashboard_port, "dashboard", "--dashboard-port")
        api_procs, api_port = start_api_workers(sync.remote.url if sync else layout.output_dir, host, api_port, workers)
        procs += [("API worker", p) for p in api_procs]
        if dashboard:
            procs.append(
                (
                    "dashboard (Voila)",
                    start_dashboard(
                        layout.output_dir,
                        host,
                        dashboard_port,
                        kernel_idle=dashboard_kernel_idle,
                        cull_interval=dashboard_cull_interval,
                        pool=dashboard_pool,
                    ),
                )
            )
        shown_host = f"[{host}]" if ":" in host else host
        for name, proc in procs:
            port = dashboard_port if name.startswith("dashboard") else api_port
            path = None if name.startswith("dashboard") else "/health"
            if not _wait_ready(host, port, proc, startup_timeout, path, stop_requested):
                if stop_requested.is_set():
                    return 0
                print(f"volcast serve: the {name} did not start (exit code {proc.poll()}); stopping", file=sys.stderr)
                return 1
        has_model = layout.latest_file.exists()
        print(
            f"volcast API:       http://{shown_host}:{api_port}  ({workers} worker{'s' * (workers > 1)}; "
            f"GET/POST /predict, GET /health, GET /openapi.json)"
        )
        print(f"  try: curl 'http://{shown_host}:{api_port}/predict?{VOL_FEATURE}=12345&{PRICE_FEATURE}=25'")
        if dashboard:
            print(f"volcast dashboard: http://{shown_host}:{dashboard_port}/")
        waiting = "" if has_model else f"; {NO_MODEL_ERROR} (the API answers 503 until then)"
        print(f"serving models from {sync.remote.url + '/models' if sync else layout.models_dir}{waiting}")
        print("Press Ctrl-C to stop.", flush=True)
        while not stop_requested.wait(0.5):
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"volcast serve: the {name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    return 1
        print("volcast serve: stopping", flush=True)
        return 0
    finally:
        if sync is not None:
            sync.stop()
        stop_processes([p for _, p in procs])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
