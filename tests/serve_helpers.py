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
from pathlib import Path

import numpy as np
import pytest

from volcast import features, ingest, train
from volcast.config import Layout
from volcast.storage import atomic_write_text

TRAIN_PARAMS = dict(iterations=40, max_train_rows=20_000, jobs=1, progress=False)


def build_output(dest: Path, seed: int = 3) -> Path:
    """A tiny but complete output dir: demo market (12 tickers, 2 years), features, one model."""
    ingest.run(dest, source="demo", jobs=1, demo_seed=seed, demo_tickers=12, demo_years=2)
    features.run(dest, jobs=1)
    train.run(dest, seed=seed, **TRAIN_PARAMS)
    return dest


def copy_output(src: Path, dest: Path, *, with_models: bool = True) -> Path:
    """Copy an output dir (dataset symlinks kept as symlinks)."""
    shutil.copytree(src, dest, symlinks=True, ignore=None if with_models else shutil.ignore_patterns("models"))
    return dest


def publish_models_from(src: Path, dest: Path) -> str:
    """Copy src's model dirs into dest, then point dest's LATEST at src's model (LATEST last)."""
    model_id = Layout.at(src).latest_file.read_text().strip()
    shutil.copytree(Layout.at(src).models_dir, Layout.at(dest).models_dir, symlinks=True,
                    ignore=shutil.ignore_patterns("LATEST"), dirs_exist_ok=True)
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

    def __init__(self, output_dir: Path, dashboard: bool, timeout: float = 120):
        code = (
            "import sys; from volcast.serve import serve; "
            "sys.exit(serve(sys.argv[1], api_port=0, dashboard_port=0, dashboard=sys.argv[2] == '1'))"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code, str(output_dir), "1" if dashboard else "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
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
        for line in self.proc.stdout:
            self.log.append(line)
            self.lines.put(line)

    def stop(self, sig=None, timeout: float = 30) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        return self.proc.wait(timeout)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
