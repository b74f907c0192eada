"""Shared harness for Strata's real-client integration tests.

`Broker` runs the `strata` binary on a free loopback port with a fresh data
dir and a file:// object store inside pytest's tmp_path.  The `broker`
fixture yields a started broker and tears it down afterwards, printing the
tail of the broker log if the test failed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
STRATA_BIN = Path(os.environ.get("STRATA_BIN", REPO_ROOT / "target" / "debug" / "strata"))
if not STRATA_BIN.is_absolute():
    STRATA_BIN = REPO_ROOT / STRATA_BIN

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


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


class Broker:
    def __init__(self, base_dir: Path, port: int | None = None):
        self.base_dir = Path(base_dir)
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

    # ------------------------------------------------------------- lifecycle
    def command(self) -> list[str]:
        return [
            str(STRATA_BIN),
            "serve",
            "--listen", self.bootstrap,
            "--advertise", self.bootstrap,
            "--data-dir", str(self.data_dir),
            "--store", f"file://{self.objects_dir.resolve()}",
        ]

    def start(self) -> "Broker":
        if self.running:
            raise BrokerError("broker already running")
        if not STRATA_BIN.exists():
            raise BrokerError(f"broker binary not found: {STRATA_BIN} (run cargo build or set STRATA_BIN)")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain broker logs (tracing-subscriber honours NO_COLOR)
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


@pytest.fixture
def broker(request, tmp_path):
    b = Broker(tmp_path / "strata")
    problems = []
    try:
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
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture
def unique_topic(request):
    """A topic name unique to the test (safe for kafka topic name rules)."""
    name = request.node.name
    clean = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return f"t-{clean}"[:200]
