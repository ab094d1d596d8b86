"""A throwaway S3-protocol server for tests: moto's server mode, as a subprocess.

The server is a direct child of this process (``python -m moto.server``) so that a
test can kill it in the middle of an upload and start it again on the same port.
Its output goes to ``<log_dir>/moto.log``, never to a pipe. moto keeps every
bucket in memory: after :meth:`S3Server.restart` the buckets are gone, and
:meth:`S3Server.restart` creates the bucket again (empty).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """moto's S3 on ``127.0.0.1:<port>``, with ``bucket`` created."""

    def __init__(
        self, bucket: str = "accord-test", *, port: int | None = None, log_dir: str | None = None
    ) -> None:
        self.bucket = bucket
        self.port = port or free_port()
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="accord-moto-"))
        self.log_path = self.log_dir / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the process ----------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Start the server, wait until it answers, and create the bucket."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"the moto server on port {self.port} is already running")
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_DEFAULT_REGION=REGION,
            MOTO_PORT=str(self.port),
        )
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            self._wait_ready(timeout)
            self.create_bucket()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the moto server exited with {self.proc.returncode} before it answered; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1.0):
                    return
            except urllib.error.HTTPError:
                return  # it answered, if not with 200
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the moto server on port {self.port} did not answer in {timeout:.0f}s; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server at once (SIGKILL) and reap it; its buckets are lost."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 30.0) -> None:
        """Stop and start again on the same port, with the bucket created again (empty)."""
        self.stop()
        deadline = time.monotonic() + timeout
        while True:  # the port may linger for a moment after the kill
            try:
                self.start(timeout=max(1.0, deadline - time.monotonic()))
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- the client -----------------------------------------------------------
    def client(self, **kwargs: Any) -> Any:
        """A boto3 S3 client for this server (its own credentials unless given)."""
        import boto3

        options: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "region_name": REGION,
        }
        options.update(kwargs)
        return boto3.client("s3", **options)

    def create_bucket(self, name: str | None = None) -> None:
        self.client().create_bucket(Bucket=name or self.bucket)

    def keys(self, prefix: str = "", bucket: str | None = None) -> list[str]:
        """Every key in the bucket under ``prefix``, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        found: list[str] = []
        for page in paginator.paginate(Bucket=bucket or self.bucket, Prefix=prefix):
            found.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(found)

    def clear(self, bucket: str | None = None) -> None:
        """Delete every key in the bucket."""
        client = self.client()
        for key in self.keys(bucket=bucket):
            client.delete_object(Bucket=bucket or self.bucket, Key=key)

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
