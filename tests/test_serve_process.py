"""`serve()` as `run_pipeline.py serve` runs it: worker processes, signals, a model swap across workers."""

from __future__ import annotations

import signal
import socket

import psutil
import pytest

from serve_helpers import (  # noqa: F401  (tiny_output is a fixture)
    Client,
    ServeProcess,
    copy_output,
    expected_volumes,
    free_port,
    latest_id,
    run_swap,
    tiny_output,
)
from volcast.config import resolve_jobs
from volcast.errors import UserError
from volcast.serve import serve


def _port_open(url: str) -> bool:
    host, port = url.split("//")[1].split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])  # SIGHUP: the terminal closed
def test_serve_answers_from_every_worker_and_stops_cleanly(tiny_output, sig):
    sp = ServeProcess(tiny_output, dashboard=False)
    try:
        workers = psutil.Process(sp.proc.pid).children(recursive=True)
        assert len(workers) == resolve_jobs(0)
        want = expected_volumes(tiny_output, [12345], [25])[0]
        # Fresh connections are spread over the workers by the kernel; every one must answer right.
        for _ in range(12):
            c = Client(sp.api_url)
            assert c.get("/predict?vol_moving_avg=12345&adj_close_rolling_med=25") == (
                200,
                {"volume": want, "model_id": latest_id(tiny_output)},
            )
            c.close()
        assert any("Press Ctrl-C to stop." in line for line in sp.log)
    finally:
        rc = sp.stop(sig)
    assert rc == 0, "".join(sp.log)
    assert not _port_open(sp.api_url)
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive


def test_a_killed_supervisor_leaves_no_dashboard_or_worker_behind(tiny_output):
    """SIGKILL (or the OOM killer) gives serve() no chance to stop its children: they stop themselves,
    and the ports are free for the next `serve`."""
    sp = ServeProcess(tiny_output, dashboard=True)
    family = psutil.Process(sp.proc.pid).children(recursive=True)
    voila = [p for p in family if "voila" in " ".join(p.cmdline())]
    assert voila, [p.cmdline() for p in family]
    assert _port_open(sp.dashboard_url) and _port_open(sp.api_url)
    sp.proc.kill()
    sp.proc.wait(10)
    gone, alive = psutil.wait_procs(family, timeout=20)
    assert not alive, [p.cmdline() for p in alive]
    assert not _port_open(sp.dashboard_url) and not _port_open(sp.api_url)


def test_serve_returns_1_when_a_worker_dies(tiny_output):
    sp = ServeProcess(tiny_output, dashboard=False)
    workers = psutil.Process(sp.proc.pid).children(recursive=True)
    workers[0].kill()
    assert sp.proc.wait(20) == 1
    assert any("exited with code" in line for line in sp.log)
    psutil.wait_procs(workers, timeout=5)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)


def test_serve_refuses_a_port_in_use(tiny_output):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"API port {port} .* in use.*--api-port"):
            serve(tiny_output, api_port=port, dashboard=False)
        with pytest.raises(UserError, match=f"dashboard port {port} .* in use.*--dashboard-port"):
            serve(tiny_output, api_port=free_port(), dashboard_port=port)


def test_dashboard_port_left_in_time_wait_is_free_but_a_listener_is_not():
    """Restarting `serve` right after a browser used the dashboard: the port is free to Voila."""
    from volcast.serve import _free_port

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tornado (Voila) binds
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server closes first (as on shutdown): its side ends in TIME_WAIT
        client.recv(1)  # wait for the FIN
        client.close()
        # The listener still holds the port, even for a binder that allows address reuse.
        with pytest.raises(UserError, match=f"dashboard port {port} .* in use"):
            _free_port("127.0.0.1", port, "dashboard", "--dashboard-port")
    with socket.socket() as plain:  # the port is now held by TIME_WAIT only
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    assert _free_port("127.0.0.1", port, "dashboard", "--dashboard-port") == port


def test_model_swap_under_load_across_worker_processes(tiny_output, tmp_path):
    """Each client thread keeps one connection, so it talks to one worker: its answers switch once."""
    out = copy_output(tiny_output, tmp_path / "out")
    sp = ServeProcess(out, dashboard=False)
    try:
        run_swap(sp.api_url, out, threads=8)
    finally:
        assert sp.stop() == 0
