"""One `strata` process: the binary, free ports, launch with the log captured, stop, and
what /proc says about it.  `harness.broker.Broker` (a single broker) and
`harness.cluster.Node` (a Raft cluster member) build on `StrataProcess`."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STRATA_BIN = Path(os.environ.get("STRATA_BIN", REPO_ROOT / "target" / "debug" / "strata"))
if not STRATA_BIN.is_absolute():
    STRATA_BIN = REPO_ROOT / STRATA_BIN

CLK_TCK = os.sysconf("SC_CLK_TCK")


def die_with_parent() -> None:
    """preexec_fn: SIGKILL the child if its parent dies (e.g. a hard pytest-timeout)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


class StrataProcess:
    """A `strata` process whose stdout and stderr go to `log_path` (appended to across
    restarts, each start headed by a `===== strata start #N: <command>` line).  Subclasses
    give `command()` and `environment()`; `launch()` starts the process without waiting,
    `stop()` signals it and waits."""

    # Environment defaults (an inherited variable wins over them).
    ENV_DEFAULTS: dict[str, str] = {}
    STOP_TIMEOUT = 20.0
    LOG_TAIL_LINES = 80

    def __init__(self, base_dir: Path, binary: Path | None = None):
        self.base_dir = Path(base_dir)
        self.binary = Path(binary) if binary is not None else STRATA_BIN
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "broker.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._log_start = 0  # log size when the current process started
        self.starts = 0
        self.sigkilled = False  # the last stop() had to escalate to SIGKILL

    def command(self) -> list[str]:
        raise NotImplementedError

    def base_environment(self) -> dict[str, str]:
        """The inherited environment with ENV_DEFAULTS filled in."""
        env = dict(os.environ)
        for k, v in self.ENV_DEFAULTS.items():
            env.setdefault(k, v)
        return env

    def environment(self) -> dict[str, str]:
        return self.base_environment()

    # ------------------------------------------------------------------ info
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int | None = None) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "<no broker log>"
        return "\n".join(text.splitlines()[-(lines or self.LOG_TAIL_LINES):])

    def log_since_start(self) -> str:
        """The log written by the current (or last) process."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------- lifecycle
    def check_binary(self, error: type[Exception]) -> None:
        if not self.binary.exists():
            raise error(f"broker binary not found: {self.binary} (run cargo build or set STRATA_BIN)")

    def launch(self) -> None:
        """Starts the process (its log appended to log_path) without waiting for it."""
        cmd = self.command()
        env = self.environment()
        self.starts += 1
        self._log_file = open(self.log_path, "ab", buffering=0)
        self._log_file.write(f"\n===== strata start #{self.starts}: {' '.join(cmd)}\n".encode())
        self._log_start = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=env, cwd=str(self.base_dir), preexec_fn=die_with_parent,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int | None:
        """Send `sig` and wait for exit (escalating to SIGKILL after `timeout`, default
        STOP_TIMEOUT). Returns the exit code (None if never started)."""
        timeout = self.STOP_TIMEOUT if timeout is None else timeout
        self.sigkilled = False
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
                self.sigkilled = True
                self._note(f"no exit {timeout}s after signal {sig}; SIGKILLed")
        self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return rc

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    def _note(self, msg: str) -> None:
        if self._log_file is not None:
            self._log_file.write(f"===== harness: {msg}\n".encode())

    # ----------------------------------------------------------------- stats
    def cpu_seconds(self) -> float:
        """utime + stime of the running process."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_mib(self, field: str = "VmRSS") -> float:
        """Resident memory now; with field="VmHWM", the most the process has had."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def disk_read_bytes(self) -> int:
        """Bytes the process read from disk (/proc/<pid>/io), -1 if unknown."""
        try:
            with open(f"/proc/{self.proc.pid}/io") as f:
                for line in f:
                    if line.startswith("read_bytes:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return -1
