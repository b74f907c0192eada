"""The Rust load generator, `strata-loadgen` (tools/loadgen: rdkafka over a statically
built librdkafka), as the benchmark drives it with --loadgen rust: one process per phase
with as many producer or consumer instances as the phase has processes in the Python
path, each on its own thread.

A job is started with --wait-go: it connects, prints `{"ready":true}` and waits for a line
on stdin; the caller then starts sampling the broker (`Phase`) and sends the go, so the
broker figures cover the measured part only. The job's result is its last stdout line (one
JSON object); its stderr goes to `<dir>/loadgen-<name>.log`."""

from __future__ import annotations

import argparse
import json
import select
import subprocess
import time
from pathlib import Path

from harness import REPO_ROOT

from bench.report import fig, note

DEFAULT_BIN = REPO_ROOT / "tools" / "loadgen" / "target" / "release" / "strata-loadgen"


class LoadgenError(RuntimeError):
    pass


def resolve(ap: argparse.ArgumentParser, a) -> None:
    """Sets a.loadgen_path from --loadgen and --loadgen-bin: the strata-loadgen binary, or
    None for the Python clients (asked for, or by default when the binary is not built)."""
    a.loadgen_path = None
    if a.loadgen == "python":
        return
    if a.loadgen_bin.is_file():
        a.loadgen_path = a.loadgen_bin.resolve()
    elif a.loadgen == "rust":
        ap.error(f"--loadgen rust: {a.loadgen_bin} is not built "
                 "(cargo build --release --manifest-path tools/loadgen/Cargo.toml)")
    else:
        note(f"{a.loadgen_bin} is not built: the Python clients drive every phase")


def figure(a) -> None:
    """The `loadgen` figure: what drives the produce, tail and catch-up phases."""
    fig("loadgen", version(a.loadgen_path) if a.loadgen_path else "python (confluent-kafka processes)")


def version(binary: Path) -> str:
    """`rust (strata-loadgen X, librdkafka Y)`, for the `loadgen` figure."""
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise LoadgenError(f"{binary} version: {out.stderr.strip() or out.returncode}")
    v = json.loads(out.stdout.strip().splitlines()[-1])
    return f"rust (strata-loadgen {v['loadgen']}, librdkafka {v['librdkafka']})"


class Job:
    """One strata-loadgen run: `start()` returns once it is connected, `go()` starts its
    clock, `result()` waits for its JSON."""

    def __init__(self, binary: Path, log_dir: Path, name: str, args: list[str]):
        self.cmd = [str(binary), "--wait-go"] + args
        self.name = name
        self.log_path = log_dir / f"loadgen-{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Job":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        line = self._readline(timeout)
        if not line or not json.loads(line).get("ready"):
            self.proc.kill()
            self.proc.wait()
            raise LoadgenError(f"strata-loadgen {self.name} did not get ready: {self._err_tail()}")
        return self

    def go(self) -> None:
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict:
        """The job's JSON; raises if it printed none (a run that failed but measured, exit
        code 1 with its JSON, is returned with `exit_code` set and `stderr` its last line)."""
        deadline = time.monotonic() + timeout
        out = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                self.proc.wait()
                raise LoadgenError(f"strata-loadgen {self.name} gave no result within {timeout:.0f} s")
            r, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if r:
                chunk = self.proc.stdout.read1(1 << 16)
                if not chunk:
                    break
                out += chunk
        rc = self.proc.wait()
        self.log.close()
        lines = [l for l in out.decode(errors="replace").splitlines() if l.strip()]
        if not lines:
            raise LoadgenError(f"strata-loadgen {self.name} exited with {rc} and no result: {self._err_tail()}")
        res = json.loads(lines[-1])
        res["exit_code"] = rc
        res["stderr"] = self._err_tail() if rc else ""
        return res

    def _readline(self, timeout: float) -> str:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().decode(errors="replace").strip() if r else ""

    def _err_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(no output)"


def common_args(bootstrap: str, topic: str) -> list[str]:
    return ["--bootstrap", bootstrap, "--topic", topic]


def produce_job(binary: Path, log_dir: Path, bootstrap: str, topic: str, nrec: int, producers: int, cargs: dict,
                name: str = "produce") -> Job:
    """The produce phase's producers: nrec records flat out, the Python producers' settings."""
    return Job(binary, log_dir, name, common_args(bootstrap, topic) + [
        "produce", "--records", str(nrec), "--producers", str(producers), "--record-size", str(cargs["record_size"]),
        "--acks", "all", "--linger-ms", str(cargs["linger_ms"]), "--batch-size", str(cargs["batch_size"]),
        "--compression", "none"])


def drain_job(binary: Path, log_dir: Path, bootstrap: str, topic: str, starts: dict, ends: dict, consumers: int,
              cargs: dict, isolation: str | None, name: str) -> Job:
    """Consumers reading partitions from starts[p] up to ends[p] (exclusive)."""
    offsets = ",".join(f"{p}={starts[p]}:{ends[p]}" for p in sorted(starts))
    args = common_args(bootstrap, topic) + [
        "consume", "--offsets", offsets, "--consumers", str(consumers), "--idle-timeout", "60",
        "--fetch-max-bytes", str(cargs["fetch_max_bytes"]), "--partition-fetch-bytes", str(cargs["partition_fetch_bytes"])]
    if isolation is not None:
        args += ["-X", f"isolation.level={isolation}"]
    return Job(binary, log_dir, name, args)


def drain_result(res: dict) -> dict:
    """A consume job's JSON in run_drain's terms (bytes: those after each consumer's first
    record, timed from the first record to the last)."""
    if res.get("exit_code"):
        note(f"strata-loadgen consume: {res.get('stderr', '')}")
    return {"bytes": res["bytes"] - res["first_bytes"], "total_bytes": res["bytes"], "records": res["records"],
            "first_record_s": (res["first_record_ms"] or 0.0) / 1000.0, "secs": max(res["seconds"], 1e-6),
            "errors": res["errors"], "unfinished": res["unfinished"], "client_cpu": res["cpu_s"]}
