"""A real S3 endpoint on loopback for the object-storage tests: moto's standalone server, started here
(127.0.0.1, a free port); s3fs talks to it over HTTP through ``AWS_ENDPOINT_URL``. No client is patched."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager

import pytest

from serve_helpers import free_port

# Fake credentials for the fake store (moto accepts any); set only while a server runs.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "volcast-test",
    "AWS_SECRET_ACCESS_KEY": "volcast-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def moto_endpoint():
    """Start moto's S3 server; yield its URL with the AWS variables pointing at it; stop it after."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint, server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def new_bucket() -> str:
    """A fresh bucket on the running endpoint; returns its name."""
    import fsspec

    name = f"volcast-{uuid.uuid4().hex[:10]}"
    fs = fsspec.filesystem("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], skip_instance_cache=True)
    fs.mkdir(name)
    return name


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_endpoint() as (endpoint, _server):
        yield endpoint
