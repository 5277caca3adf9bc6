"""Fixtures and helpers shared by test_serve*.py and test_dashboard_browser.py.

Models are real: a tiny generated market goes through ingest -> features -> train (the production
code, a few seconds), so the API is tested against exactly what `volcast.train.load_model` loads.
"""

from __future__ import annotations

import http.client
import json
import math
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from volcast import features, ingest, train
from volcast.config import Layout
from volcast.storage import atomic_write_text

VOL, PRICE = "vol_moving_avg", "adj_close_rolling_med"
TRAIN_PARAMS = dict(iterations=40, max_train_rows=20_000, jobs=1, progress=False)


def build_output(dest: Path, seed: int = 3) -> Path:
    """A tiny but complete output dir: demo market (12 tickers, 2 years), features, one model."""
    ingest.run(dest, source="demo", jobs=1, demo_seed=seed, demo_tickers=12, demo_years=2)
    features.run(dest, jobs=1)
    train.run(dest, seed=seed, **TRAIN_PARAMS)
    return dest


def copy_output(src: Path, dest: Path) -> Path:
    """Copy an output dir (dataset symlinks kept as symlinks)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def publish_models_from(src: Path, dest: Path) -> str:
    """Copy src's model dirs into dest, then point dest's LATEST at src's model (LATEST last)."""
    model_id = Layout.at(src).latest_file.read_text().strip()
    shutil.copytree(
        Layout.at(src).models_dir,
        Layout.at(dest).models_dir,
        symlinks=True,
        ignore=shutil.ignore_patterns("LATEST"),
        dirs_exist_ok=True,
    )
    atomic_write_text(Layout.at(dest).latest_file, model_id + "\n")
    return model_id


def expected_volumes(output_or_model_dir: Path, vols, prices) -> list[int]:
    """What the API must answer, worked out independently: load the model, predict, round half up."""
    model_dir = output_or_model_dir
    if not (Path(model_dir) / "card.json").exists():
        model_dir = train.latest_model_dir(output_or_model_dir)
    raw = train.load_model(model_dir).predict(np.asarray(vols, float), np.asarray(prices, float))
    return [max(0, math.floor(float(x) + 0.5)) for x in raw]


@pytest.fixture(scope="session")
def tiny_output(tmp_path_factory) -> Path:
    """Shared and read-only: copy it (``copy_output``) before changing anything."""
    return build_output(tmp_path_factory.mktemp("serve-tiny") / "out")


def latest_id(output_dir) -> str:
    return Layout.at(output_dir).latest_file.read_text().strip()


class Client:
    """One keep-alive HTTP connection (so a thread of requests stays on one server worker)."""

    def __init__(self, base_url: str, timeout: float = 10):
        m = re.match(r"http://([^:/]+):(\d+)", base_url)
        self.conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=timeout)

    def request(self, method: str, path: str, body=None, raw: bytes | None = None, headers=None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        self.conn.request(method, path, body=data, headers=hdrs)
        resp = self.conn.getresponse()
        payload = resp.read()
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = payload
        return resp.status, parsed, resp

    def get(self, path: str):
        status, body, _ = self.request("GET", path)
        return status, body

    def post(self, path: str, body=None, raw: bytes | None = None):
        status, parsed, _ = self.request("POST", path, body=body, raw=raw)
        return status, parsed

    def close(self):
        self.conn.close()


class ServeProcess:
    """``volcast.serve.serve()`` in a child process on free ports (what `run_pipeline.py serve` runs)."""

    def __init__(self, output_dir: Path, dashboard: bool, timeout: float = 120, **options):
        code = (
            "import json, sys; from volcast.serve import serve; "
            "sys.exit(serve(sys.argv[1], api_port=0, dashboard_port=0, dashboard=sys.argv[2] == '1', "
            "**json.loads(sys.argv[3])))"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code, str(output_dir), "1" if dashboard else "0", json.dumps(options)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        self.api_url = self.dashboard_url = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if m := re.match(r"volcast API:\s+(http://\S+)", line):
                self.api_url = m.group(1)
            if m := re.match(r"volcast dashboard:\s+(http://\S+?)/?$", line.strip()):
                self.dashboard_url = m.group(1)
            if line.startswith("Press Ctrl-C"):
                return
        self.stop()
        raise AssertionError("serve() did not start:\n" + "".join(self.log))

    def _pump(self):
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.log.append(line)
                self.lines.put(line)

    def stop(self, sig=None, timeout: float = 30) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._pump_thread.join(5)  # EOF once serve() and the children it stopped are gone
        return code


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    """``predicate()``'s first truthy value, polled until ``timeout``; an AssertionError if it never comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not reached within {timeout} s")


def hammer(
    base_url: str, stop: threading.Event, seed: int, last_model: dict | None = None
) -> list[tuple[int, object, tuple]]:
    """Requests on one keep-alive connection until stopped: GETs and POSTed lists, random features.

    ``last_model[seed]``, if given, holds the model id of the latest answer, so a caller can wait for a swap.
    """
    rng = np.random.default_rng(seed)
    c = Client(base_url)
    out = []
    try:
        while not stop.is_set():
            vol, price = float(np.round(rng.lognormal(12, 2), 2)), float(np.round(rng.lognormal(3, 1), 3))
            if rng.random() < 0.8:
                status, body = c.get(f"/predict?vol_moving_avg={vol}&adj_close_rolling_med={price}")
                out.append((status, body, ((vol, price),)))
            else:
                pairs = ((vol, price), (vol * 2, price / 2))
                status, body = c.post("/predict", [{VOL: v, PRICE: p} for v, p in pairs])
                out.append((status, body, pairs))
            if last_model is not None and status == 200:
                last_model[seed] = (body[0] if isinstance(body, list) else body)["model_id"]
    except Exception as err:  # a dropped connection is a failure too
        out.append((-1, repr(err), ()))
    finally:
        c.close()
    return out


def check_swap(results: list[list], old_dir: Path, new_dir: Path, old: str, new: str) -> None:
    models = {old: train.load_model(old_dir), new: train.load_model(new_dir)}
    seen_new = 0
    for thread_results in results:
        assert thread_results, "a client thread made no request"
        switched = False
        for status, body, pairs in thread_results:
            assert status == 200, (status, body)
            answers = body if isinstance(body, list) else [body]
            ids = {a["model_id"] for a in answers}
            assert len(ids) == 1 and ids <= {old, new}, ids  # one model per answer, never a mix
            model_id = ids.pop()
            if model_id == new:
                switched = True
                seen_new += 1
            else:
                assert not switched, "went back to the old model after the new one"
            raw = models[model_id].predict(np.array([v for v, _ in pairs]), np.array([p for _, p in pairs]))
            assert [a["volume"] for a in answers] == [max(0, math.floor(x + 0.5)) for x in raw]
        assert switched, "a client never saw the new model"
    assert seen_new


def run_swap(base_url: str, out: Path, threads: int = 6) -> None:
    old = latest_id(out)
    old_dir = train.latest_model_dir(out)
    stop = threading.Event()
    last_model: dict[int, str] = {}
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(hammer, base_url, stop, seed, last_model) for seed in range(threads)]
        time.sleep(0.5)
        train.run(out, seed=11, iterations=25, max_train_rows=20_000, jobs=1, progress=False)  # publishes a new LATEST
        new = latest_id(out)
        assert new != old
        # Servers poll LATEST every second; wait until every client is answered by the new model (on a loaded
        # machine that can take longer than a fixed sleep), then keep hammering a little to catch a step back.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(last_model.get(i) == new for i in range(threads)):
            time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        results = [f.result() for f in futures]
    check_swap(results, old_dir, train.latest_model_dir(out), old, new)
