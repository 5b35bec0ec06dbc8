"""A real S3 server on loopback for tests: moto's server, in a venv of its own
(its dependencies must not touch ours), installed from PyPI on first use.

    with S3Server(workdir) as s3:
        bucket = s3.bucket("conveyor-test")      # s3://conveyor-test
        env = s3.env                              # AWS_ENDPOINT_URL=..., keys, region

The venv lives in $CONVEYOR_MOTO_VENV, default `.venv-moto` beside the repo's
`.venv`, and is reused by later runs. The server is the leader of its own
process group and dies with the test process (see tests/portable.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from tests.portable import accepts, die_with_parent, free_ports

__all__ = ["S3Server", "moto_venv"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOTO_REQUIREMENT = "moto[server]==5.2.5"
START_TIMEOUT = 60.0


def moto_venv() -> str:
    """The directory of a venv with moto's server, created if missing."""
    venv = os.environ.get("CONVEYOR_MOTO_VENV") or os.path.join(REPO, ".venv-moto")
    server = os.path.join(venv, "bin", "moto_server")
    if os.path.exists(server):
        return venv
    # The base interpreter, not this venv's: moto's venv shares nothing with ours.
    python = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([python, "-m", "venv", venv], check=True)
    subprocess.run(
        [os.path.join(venv, "bin", "pip"), "install", "-q", MOTO_REQUIREMENT], check=True,
        stdout=subprocess.DEVNULL,
    )
    return venv


class S3Server:
    """moto_server on a free loopback port, with the standard AWS environment
    that points boto3, Beam, pyarrow and TensorFlow (through Conveyor) at it."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.port = free_ports(1)[0]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "conveyor-test-key",
            "AWS_SECRET_ACCESS_KEY": "conveyor-test-secret",
            "AWS_REGION": "us-east-1",
        }
        self.proc: Any = None

    def __enter__(self) -> S3Server:
        os.makedirs(self.workdir, exist_ok=True)
        venv = moto_venv()
        self._log = open(os.path.join(self.workdir, "moto.log"), "wb")
        self.proc = subprocess.Popen(
            [os.path.join(venv, "bin", "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent(),
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not start on port {self.port}; see {self._log.name}")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.env["AWS_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket(self, name: str) -> str:
        """A new, empty bucket: its s3:// URI."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in a bucket under a prefix."""
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]

    def upload_dir(self, local: str, uri: str) -> None:
        """Copy a local directory's files to s3://bucket/prefix."""
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        client = self.client()
        for directory, _, names in os.walk(local):
            for name in names:
                path = os.path.join(directory, name)
                key = "/".join(p for p in (prefix, os.path.relpath(path, local)) if p)
                client.upload_file(path, bucket, key)
