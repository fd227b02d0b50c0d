"""Shared fixtures: a real S3 API on a loopback port (moto's server, benchmarks/local_s3.py)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3 server process for the session, with the standard AWS variables pointing at it (so
    pyarrow, boto3 and every process the tests start find it)."""
    pytest.importorskip("moto.server", reason="moto[server] is in the test extra: pip install -e '.[test]'")
    from benchmarks.local_s3 import LocalS3

    server = LocalS3(log=str(tmp_path_factory.mktemp("s3") / "moto.log")).start()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in server.env().items():
            mp.setenv(key, value)
        for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(key, raising=False)
        yield server
    server.stop()


@pytest.fixture
def s3_results(s3_server) -> str:
    """A fresh s3:// results location (its own bucket) on the local server."""
    return s3_server.bucket(f"t-{uuid.uuid4().hex[:12]}") + "/results"
