"""``--endpoint-url`` for ``run_pipeline.py`` and ``run_pipeline.py serve``, against a real S3 endpoint on
loopback (moto's server). The environment points AWS_ENDPOINT_URL at a dead port, so only the option can
reach the store; no credential is printed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest

from s3_helpers import S3_ENV, moto_endpoint, new_bucket
from serve_helpers import Client, copy_output, latest_id, tiny_output  # noqa: F401 - the fixture
from volcast import remote

ROOT = Path(__file__).resolve().parents[1]
DEAD = "http://127.0.0.1:9"  # the discard port: nothing answers S3 there


def _env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in remote.ENDPOINT_ENVS}
    return {**env, "AWS_ENDPOINT_URL": DEAD, "VOLCAST_CACHE": str(cache)}


def _cli(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_pipeline.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def store():
    with moto_endpoint() as (endpoint, _server):
        yield endpoint


def test_endpoint_url_option_reaches_the_store(store, tmp_path):
    url = f"s3://{new_bucket()}/opt"
    demo = ["--source", "demo", "--param", "ingest.demo_tickers=8", "--param", "ingest.demo_years=1"]
    done = _cli(
        "--output-dir", url, "--endpoint-url", store, "--stages", "ingest", *demo, "--no-progress",
        env=_env(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    fs = fsspec.filesystem("s3", endpoint_url=store, skip_instance_cache=True)
    root = url.split("://", 1)[1]
    version = fs.cat_file(f"{root}/data/raw.current").decode().strip()
    assert version.startswith(".raw.v") and fs.ls(f"{root}/data/{version}")
    manifest = json.loads(fs.cat_file(next(p for p in fs.find(f"{root}/runs") if p.endswith("manifest.json"))))
    assert manifest["status"] == "ok"
    log = done.stdout + done.stderr
    assert f"{url} at {store}" in log  # says which endpoint
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in log and S3_ENV["AWS_ACCESS_KEY_ID"] not in log

    # Without the option the dead endpoint of the environment is used: one line, no traceback, no secret.
    failed = _cli("--output-dir", url, "--stages", "ingest", *demo, "--no-progress", env=_env(tmp_path / "other"))
    assert failed.returncode == 2 and failed.stderr.startswith(f"error: cannot read {url}")
    assert "Traceback" not in failed.stderr and S3_ENV["AWS_SECRET_ACCESS_KEY"] not in failed.stderr


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("http://AKIAVOLCAST:hunter2-secret@127.0.0.1:9000", "no credentials in the URL"),
        ("ftp://127.0.0.1:21", "expected http(s)://HOST[:PORT]"),
        ("http://127.0.0.1:99999", "expected http(s)://HOST[:PORT]"),
    ],
)
def test_a_bad_endpoint_url_is_one_line_and_never_shows_a_secret(endpoint, message, tmp_path):
    for command in ([], ["serve"]):
        done = _cli(*command, "--output-dir", "s3://b/p", "--endpoint-url", endpoint, env=_env(tmp_path))
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr
        assert "hunter2" not in done.stdout + done.stderr
        if "@" in endpoint:
            assert "http://***@127.0.0.1:9000" in done.stderr  # which URL, without what is secret in it


def test_serve_with_endpoint_url_loads_the_stores_model(tiny_output, tmp_path):
    with moto_endpoint() as (endpoint, _server):
        url = f"s3://{new_bucket()}/prod"
        out = copy_output(tiny_output, tmp_path / "trainer")
        remote.Remote(url, mirror=out).push()
        proc = subprocess.Popen(
            [sys.executable, "-u", str(ROOT / "run_pipeline.py"), "serve", "--output-dir", url,
             "--endpoint-url", endpoint, "--api-port", "0", "--dashboard-port", "0", "--api-workers", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(tmp_path / "cache"),
            cwd=ROOT,
        )  # fmt: skip
        log, api = [], None
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                log.append(line)
                if m := re.match(r"volcast API:\s+(http://\S+)", line):
                    api = m.group(1)
                if line.startswith("Press Ctrl-C"):
                    break
            assert api, "".join(log)
            status, body = Client(api).get("/health")
            assert (status, body) == (200, {"status": "ok", "model_id": latest_id(out)})
        finally:
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=60)
        text = "".join(log) + rest
        assert proc.returncode == 0, text[-2000:]
        assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in text
