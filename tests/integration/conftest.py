"""Shared harness for Strata's real-client integration tests.

`Broker` runs the `strata` binary on a free loopback port with a fresh data
dir.  Its object store is chosen by STRATA_TEST_STORE:

* `local` (default): a file:// directory inside pytest's tmp_path;
* `s3`: a bucket of its own on a real S3-compatible server process, moto's
  server (`moto_server`, in-memory), started once per pytest session on a free
  loopback port.  The broker talks to it over HTTP with the standard AWS_*
  variables, exactly as it would talk to MinIO or S3.

scripts/test.sh runs the whole suite once per store.  The `broker` fixture
yields a started broker and tears it down afterwards, printing the tail of the
broker log if the test failed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STRATA_BIN = Path(os.environ.get("STRATA_BIN", REPO_ROOT / "target" / "debug" / "strata"))
if not STRATA_BIN.is_absolute():
    STRATA_BIN = REPO_ROOT / STRATA_BIN

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

TEST_STORE = os.environ.get("STRATA_TEST_STORE", "local")
if TEST_STORE not in ("local", "s3"):
    raise RuntimeError(f"STRATA_TEST_STORE must be 'local' or 's3', not {TEST_STORE!r}")

# Dummy credentials for the test server.  They are always set for an s3 broker: without
# them the AWS credential chain would try the EC2 instance-metadata address.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "strata-test",
    "AWS_SECRET_ACCESS_KEY": "strata-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the broker if the test runner dies (e.g. a hard pytest-timeout)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerError(RuntimeError):
    pass


# ------------------------------------------------------------- S3 test server
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
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}; see {log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
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


class TcpProxy:
    """A loopback TCP relay (threads) that can be cut: `cut()` closes the listener (new
    connections are refused) and resets every open connection; `restore()` listens again
    on the same port.  Used to make the S3 server unreachable for the broker."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._closed = False
        self.restore()

    def restore(self) -> None:
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def cut(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.close()  # RST
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self.cut()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s_ in (src, dst):
                try:
                    s_.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Broker:
    """One strata process.  `store` is "local" or "s3" (default: STRATA_TEST_STORE); an s3
    broker gets a fresh bucket unless `bucket` is given.  `extra_args` / `extra_env` are
    appended to the command line / environment on every start; `s3_endpoint` overrides the
    server address (e.g. a TcpProxy in front of it)."""

    def __init__(self, base_dir: Path, port: int | None = None, store: str | None = None,
                 bucket: str | None = None, extra_args: list[str] | None = None,
                 extra_env: dict[str, str] | None = None):
        self.base_dir = Path(base_dir)
        self.store = store or TEST_STORE
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(extra_env or {})
        self.s3: S3Server | None = None
        self.bucket = bucket
        self.s3_endpoint: str | None = None
        if self.store == "s3":
            self.s3 = s3_server(self.base_dir.parent)
            if self.bucket is None:
                self.bucket = self.s3.new_bucket()
        self.data_dir = self.base_dir / "data"
        self.objects_dir = self.base_dir / "objects"
        self.log_path = self.base_dir / "broker.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.starts = 0

    # ------------------------------------------------------------------ info
    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no broker log>"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def store_url(self) -> str:
        if self.store == "s3":
            return f"s3://{self.bucket}/strata"
        return f"file://{self.objects_dir.resolve()}"

    # ------------------------------------------------------------- lifecycle
    def command(self) -> list[str]:
        return [
            str(STRATA_BIN),
            "serve",
            "--listen", self.bootstrap,
            "--advertise", self.bootstrap,
            "--data-dir", str(self.data_dir),
            "--store", self.store_url,
        ] + self.extra_args

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain broker logs (tracing-subscriber honours NO_COLOR)
        # Many brokers share this machine: no metrics listener unless a test asks for one
        # (a --metrics-listen flag wins over the variable).
        env.setdefault("STRATA_METRICS_LISTEN", "none")
        if self.store == "s3":
            for k in list(env):
                if k.startswith("AWS_"):
                    del env[k]
            env.update(S3_ENV)
            env["AWS_ENDPOINT_URL"] = self.s3_endpoint or self.s3.endpoint
        env.update(self.extra_env)
        return env

    def start(self) -> "Broker":
        if self.running:
            raise BrokerError("broker already running")
        if not STRATA_BIN.exists():
            raise BrokerError(f"broker binary not found: {STRATA_BIN} (run cargo build or set STRATA_BIN)")
        env = self.environment()
        self.starts += 1
        self._log_file = open(self.log_path, "ab", buffering=0)
        self._log_file.write(f"\n===== strata start #{self.starts}: {' '.join(self.command())}\n".encode())
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(self.base_dir),
            preexec_fn=_die_with_parent,
        )
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
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise BrokerError(
            f"strata did not listen on {self.bootstrap} within {START_TIMEOUT}s\n"
            f"--- broker log tail ---\n{self.log_tail()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send `sig` and wait for exit (escalating to SIGKILL after `timeout`). Returns exit code."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait(timeout=10)
                self._note(f"broker did not exit within {timeout}s after signal {sig}; SIGKILLed")
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._wait_port_free()
        return rc

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM) -> "Broker":
        self.stop(sig)
        return self.start()

    def _note(self, msg: str) -> None:
        if self._log_file is not None:
            self._log_file.write(f"===== harness: {msg}\n".encode())

    def _wait_port_free(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                return
            time.sleep(0.1)


# ---------------------------------------------------------------- pytest glue
@pytest.fixture(scope="session", autouse=True)
def _stop_s3_server():
    yield
    global _S3_SERVER
    if _S3_SERVER is not None:
        _S3_SERVER.close()
        _S3_SERVER = None


# Modules that test the wire protocol, the front end, metrics or deployment files: what
# they check does not depend on the object store, so they run in the local pass only
# (the S3 pass keeps to what exercises the store), which keeps CI within its time.
STORE_INDEPENDENT = {
    "test_wire_fields", "test_wire_order", "test_admin_wire", "test_admin_apis", "test_semantics",
    "test_kafkajs_semantics", "test_compose", "test_terraform", "test_metrics", "test_tls",
    "test_sasl", "test_acls", "test_transactions",
}


def pytest_collection_modifyitems(config, items):
    if TEST_STORE == "local":
        return
    skip = pytest.mark.skip(reason="store-independent: runs in the local pass only")
    for item in items:
        if item.module.__name__ in STORE_INDEPENDENT:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"strata object store for this run: STRATA_TEST_STORE={TEST_STORE}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def _failed(request) -> bool:
    node = request.node
    return any(
        getattr(node, "rep_" + when, None) is not None and getattr(node, "rep_" + when).failed
        for when in ("setup", "call")
    )


def check_health(b: Broker) -> list[str]:
    """Problems a test must not leave behind: a dead broker process or a panic in the log."""
    problems = []
    if b.proc is not None and b.proc.poll() is not None:
        problems.append(f"strata exited unexpectedly with code {b.proc.returncode}")
    if "panicked at" in b.log_text():
        problems.append("strata log contains a panic ('panicked at')")
    return problems


def supervise(request, b: Broker, start: bool = True, report=None):
    """The body of a broker fixture (`yield from supervise(...)`): yields the broker,
    then stops it; when the test failed or the broker is unhealthy, prints its log tail
    (and `report()`, if given); fails the test if the broker is unhealthy."""
    problems = []
    try:
        if start:
            b.start()
        yield b
        problems = check_health(b)
    finally:
        rc = None
        try:
            rc = b.stop()
        finally:
            if problems or _failed(request):
                print(f"\n--- strata log tail ({b.log_path}, last exit code {rc}) ---")
                print(b.log_tail(150))
                if report is not None:
                    print(report())
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture
def broker(request, tmp_path):
    yield from supervise(request, Broker(tmp_path / "strata"))


@pytest.fixture
def unique_topic(request):
    """A topic name unique to the test (safe for kafka topic name rules)."""
    name = request.node.name
    clean = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return f"t-{clean}"[:200]
