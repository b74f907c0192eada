"""A single `strata` broker on a free loopback port with a fresh data dir.

Its object store is chosen by `store` (default: STRATA_TEST_STORE, else `local`):

* `local`: a file:// directory, `<base_dir>/objects`;
* `s3`: a bucket of its own on the session's moto server (`harness.s3`), which the broker
  reaches over HTTP with the standard AWS_* variables, exactly as it would reach MinIO or S3;

or by `store_url`, a store of the caller's own (the benchmark's --store): the harness then
neither creates it nor sets AWS_* for it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from harness.process import StrataProcess, free_port, port_open
from harness.s3 import S3_ENV, S3Server, s3_server

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

TEST_STORE = os.environ.get("STRATA_TEST_STORE", "local")


class BrokerError(RuntimeError):
    pass


class Broker(StrataProcess):
    """One strata process.  `store` is "local" or "s3" (default: STRATA_TEST_STORE); an s3
    broker gets a fresh bucket unless `bucket` is given.  `extra_args` / `extra_env` are
    appended to the command line / environment on every start; `s3_endpoint` overrides the
    server address (e.g. a TcpProxy in front of it).  `binary` defaults to STRATA_BIN and
    `env_defaults` to ENV_DEFAULTS (variables set unless the environment has them)."""

    ENV_DEFAULTS = {
        "RUST_LOG": "info",
        "RUST_BACKTRACE": "1",
        "NO_COLOR": "1",  # plain broker logs (tracing-subscriber honours NO_COLOR)
        # Many brokers share this machine: no metrics listener unless a test asks for one
        # (a --metrics-listen flag wins over the variable).
        "STRATA_METRICS_LISTEN": "none",
    }
    STOP_TIMEOUT = STOP_TIMEOUT

    def __init__(self, base_dir: Path, port: int | None = None, store: str | None = None,
                 bucket: str | None = None, extra_args: list[str] | None = None,
                 extra_env: dict[str, str] | None = None, *, store_url: str | None = None,
                 binary: Path | None = None, env_defaults: dict[str, str] | None = None):
        super().__init__(base_dir, binary)
        self.explicit_store_url = store_url
        self.store = "url" if store_url is not None else (store or TEST_STORE)
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(extra_env or {})
        if env_defaults is not None:
            self.ENV_DEFAULTS = dict(env_defaults)
        self.s3: S3Server | None = None
        self.bucket = bucket
        self.s3_endpoint: str | None = None
        if self.store == "s3":
            self.s3 = s3_server(self.base_dir.parent)
            if self.bucket is None:
                self.bucket = self.s3.new_bucket()
        self.objects_dir = self.base_dir / "objects"
        if self.store_dir is not None:  # the local store, or a file:// store_url
            self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.store != "url":
            self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()

    # ------------------------------------------------------------------ info
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def store_url(self) -> str:
        if self.explicit_store_url is not None:
            return self.explicit_store_url
        if self.store == "s3":
            return f"s3://{self.bucket}/strata"
        return f"file://{self.objects_dir.resolve()}"

    @property
    def store_dir(self) -> Path | None:
        """The store's directory when it is a file:// store, else None."""
        url = self.store_url
        return Path(url[len("file://"):]) if url.startswith("file://") else None

    def segment_objects(self) -> int:
        """Files in a file:// store (-1 for other stores)."""
        if not self.store_dir:
            return -1
        return sum(len(files) for _, _, files in os.walk(self.store_dir))

    def store_bytes(self) -> int:
        """Bytes in a file:// store (-1 for other stores)."""
        if not self.store_dir:
            return -1
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(self.store_dir) for f in files)

    # ------------------------------------------------------------- lifecycle
    def command(self) -> list[str]:
        return [
            str(self.binary),
            "serve",
            "--listen", self.bootstrap,
            "--advertise", self.bootstrap,
            "--data-dir", str(self.data_dir),
            "--store", self.store_url,
        ] + self.extra_args

    def environment(self) -> dict[str, str]:
        env = self.base_environment()
        if self.store == "s3":
            for k in list(env):
                if k.startswith("AWS_"):
                    del env[k]
            env.update(S3_ENV)
            env["AWS_ENDPOINT_URL"] = self.s3_endpoint or self.s3.endpoint
        env.update(self.extra_env)
        return env

    def start(self) -> "Broker":
        """Launches the broker and waits until it accepts connections on its port."""
        if self.running:
            raise BrokerError("broker already running")
        self.check_binary(BrokerError)
        self.launch()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise BrokerError(
                    f"strata exited with code {rc} before listening on {self.bootstrap}\n"
                    f"--- broker log tail ---\n{self.log_tail()}"
                )
            if port_open(self.port):
                return
            time.sleep(0.1)
        self.kill()
        raise BrokerError(
            f"strata did not listen on {self.bootstrap} within {START_TIMEOUT}s\n"
            f"--- broker log tail ---\n{self.log_tail()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int | None:
        """Send `sig` and wait for exit (escalating to SIGKILL after `timeout`), then for
        the port to be free. Returns the exit code."""
        had_process = self.proc is not None
        rc = super().stop(sig, timeout)
        if had_process:
            self._wait_port_free()
        return rc

    def restart(self, sig: int = signal.SIGTERM) -> "Broker":
        self.stop(sig)
        return self.start()

    def _wait_port_free(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not port_open(self.port, timeout=0.2):
                return
            time.sleep(0.1)
