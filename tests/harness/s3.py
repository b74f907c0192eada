"""moto's S3-compatible server (`moto_server`, in-memory) as a separate process on a free
loopback port: one per pytest session, started on first use, every s3 broker a bucket of
its own on it.  boto3 (installed with moto[server]) is imported only when one starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from harness.process import die_with_parent, free_port, port_open

# Dummy credentials for the test server.  They are always set for an s3 broker: without
# them the AWS credential chain would try the EC2 instance-metadata address.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "strata-test",
    "AWS_SECRET_ACCESS_KEY": "strata-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


class S3Server:
    """moto's S3-compatible server as a separate process (in-memory: its data lives as
    long as the process).  One per pytest session; every broker gets its own bucket."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe), "-H", "127.0.0.1", "-p", str(self.port)]
        self._log = open(log_path, "ab", buffering=0)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}; see {log_path}")
            if port_open(self.port):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not listen within 30s; see {log_path}")
            time.sleep(0.1)
        import boto3  # installed with moto[server]

        self.client = boto3.client(
            "s3", endpoint_url=self.endpoint,
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=S3_ENV["AWS_REGION"],
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def new_bucket(self) -> str:
        name = f"strata-{uuid.uuid4().hex[:20]}"
        self.client.create_bucket(Bucket=name)
        return name

    def list_keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """key -> size of every object under prefix."""
        keys = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                keys[obj["Key"]] = obj["Size"]
        return keys

    def get(self, bucket: str, key: str) -> bytes:
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


_S3_SERVER: S3Server | None = None


def s3_server(base_dir: Path | None = None) -> S3Server:
    """The session's S3 server, started on first use (stopped by the session fixture)."""
    global _S3_SERVER
    if _S3_SERVER is None or _S3_SERVER.proc.poll() is not None:
        log_dir = Path(base_dir) if base_dir else Path(os.environ.get("TMPDIR", "/tmp"))
        _S3_SERVER = S3Server(log_dir / f"moto-{os.getpid()}.log")
    return _S3_SERVER


def close_s3_server() -> None:
    """Stops the session's S3 server, if one was started."""
    global _S3_SERVER
    if _S3_SERVER is not None:
        _S3_SERVER.close()
        _S3_SERVER = None
