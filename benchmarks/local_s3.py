"""A real S3 API on a loopback port for the tests and the benchmarks: moto's server mode (`moto[server]`,
in the `test` extra), run as its own process, offline, objects held in its memory.

    with LocalS3() as s3:
        s3.bucket("results")
        env = s3.env()  # AWS_ENDPOINT_URL, credentials and region: what pyarrow, boto3 and Ray read

Clients find it through the standard variables (`env()`): pyarrow's `FileSystem.from_uri("s3://...")`
reads AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_S3), so do boto3 and every process started with them
(run_grid, Ray's workers). The server answers conditional writes (If-None-Match / If-Match) like S3.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local-test-key",
    "AWS_SECRET_ACCESS_KEY": "local-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """A moto S3 server process on 127.0.0.1 (a free port); `start()`/`stop()` or a context manager."""

    def __init__(self, log: str | None = None) -> None:
        self.log = log or os.devnull
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables that point S3 clients (pyarrow, boto3, Ray) at this server."""
        return {"AWS_ENDPOINT_URL": self.url, **CREDENTIALS}

    def start(self, timeout: float = 180.0) -> LocalS3:
        for _ in range(3):  # a port taken between choosing it and binding it: choose another
            self.port = _free_port()
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.time() + timeout
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    urllib.request.urlopen(self.url + "/", timeout=2).read()
                    return self
                except OSError:
                    time.sleep(0.2)
            self.stop()
        raise RuntimeError(f"the local S3 server (moto) did not start; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            config=Config(s3={"addressing_style": "path"}),
        )

    def bucket(self, name: str) -> str:
        """Create bucket `name` (if needed); returns its s3:// URI."""
        client = self.client()
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
