"""Running the HTTP app: in a background thread of this process (``ApiServer``, for tests,
notebooks and benchmarks), or as one API worker process on an inherited listening socket."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence

from volcast.config import DEFAULT_HOST

from .http import ApiApplication, make_http_server
from .model import ModelHolder


class ApiServer:
    """The API in a background thread of this process (tests, notebooks, benchmarks).

    ``ApiServer(output_dir, port=0).start()`` binds a free port; ``.url`` tells where; ``.stop()``.
    The ``holder`` argument lets a caller inject a ``ModelHolder`` with its own loader.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        holder: ModelHolder | None = None,
        check_interval: float = 1.0,
    ):
        if holder is None:
            from volcast.remote import model_holder  # an s3:// output dir follows models/LATEST on the store

            holder = model_holder(output_dir, check_interval=check_interval)
        self.holder = holder
        self.host, self.port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.app: ApiApplication | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ApiServer:
        from tornado.netutil import bind_sockets

        sockets = bind_sockets(self.port, self.host)
        self.port = sockets[0].getsockname()[1]
        self.holder.refresh()
        self.holder.start_polling()
        ready = threading.Event()

        async def main():
            self._loop = asyncio.get_running_loop()
            self._stopped = asyncio.Event()
            server = make_http_server(self.holder)
            self.app = server.request_callback
            server.add_sockets(sockets)
            ready.set()
            await self._stopped.wait()
            server.stop()
            await server.close_all_connections()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), name="volcast-api", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.holder.stop_polling()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_api_worker(sock: socket.socket, output_dir: str | os.PathLike | None, check_interval: float = 1.0) -> int:
    """Serve the API on an already-bound listening socket until SIGTERM/SIGINT (one worker process)."""
    import gc

    from volcast.remote import model_holder  # an s3:// output dir follows models/LATEST on the store

    holder = model_holder(output_dir, check_interval=check_interval)
    holder.refresh()
    holder.start_polling()
    parent = os.getppid()

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = make_http_server(holder)
        server.add_sockets([sock])
        gc.freeze()  # startup objects need no more collection: fewer, shorter GC pauses under load

        async def watch_parent():  # the supervisor died without stopping us: do not linger
            while not stop.is_set():
                await asyncio.sleep(1)
                if os.getppid() != parent:
                    stop.set()

        watcher = asyncio.ensure_future(watch_parent())
        await stop.wait()
        watcher.cancel()
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), 5)
        except TimeoutError:
            pass

    asyncio.run(main())
    holder.stop_polling()
    return 0


def _worker_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="volcast-api-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--check-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[volcast api {os.getpid()}] %(levelname)s %(message)s")
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(False)  # tornado's accept loop runs until EWOULDBLOCK
    sys.exit(run_api_worker(sock, args.output_dir, args.check_interval))
