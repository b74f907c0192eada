#!/usr/bin/env python3
"""Strata benchmark (issue 5): starts its own broker, drives it with librdkafka
(confluent-kafka), and prints one `name: value unit` line per figure so runs can
be diffed.  Run it through scripts/bench.sh, which prepares the venv and binary.

Units: MB = 10^6 bytes, GB = 10^9 bytes, MiB/GiB only in option values.
Machine figures are measured in the same run, on the filesystem of --dir, so
throughputs can be read as fractions of what this machine can do.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import multiprocessing as mp
import os
import platform
import re
import shlex
import statistics
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MB = 1e6
GB = 1e9
TOPIC = "bench"
# --soak-compact: keys per partition, every how many transactions one is aborted, and the
# topic's configs (segments roll and markers may go within a minute, so a 30-minute soak
# sees many cleaning passes).
SOAK_KEYS = 16
SOAK_ABORT_EVERY = 4
SOAK_COMPACT_CONFIG = {"cleanup.policy": "compact", "segment.ms": "60000", "delete.retention.ms": "60000",
                       "min.cleanable.dirty.ratio": "0.1"}
TXN_TOPIC = "bench-txn"  # --txn: the transactional produce phase's own topic
IDEM_TOPIC = "bench-idempotent"  # --txn: the idempotent comparison phase's topic
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- output
def fig(name: str, value, unit: str = "") -> None:
    """One figure per line, stable format: `name: value unit`."""
    if isinstance(value, float):
        value = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    print(f"{name}: {value} {unit}".rstrip(), flush=True)


def note(msg: str) -> None:
    print(f"# {msg}", flush=True)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 256MiB, 2GiB)")
    n = float(m.group(1))
    unit = (m.group(2) or "b").lower().rstrip("b")
    mult = {"": 1, "k": 1000, "ki": 1024, "m": 10**6, "mi": 2**20, "g": 10**9, "gi": 2**30}[unit]
    return int(n * mult)


def pct(sorted_vals: list[float], p: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


# ----------------------------------------------------------------- machine
def machine_info(bench_dir: Path) -> None:
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    df = subprocess.run(["df", "-hT", str(bench_dir)], capture_output=True, text=True).stdout.splitlines()
    fig("machine_nproc", os.cpu_count())
    fig("machine_cpu", cpu)
    fig("machine_memory", f"{mem_kib / 2**20:.1f}", "GiB")
    fig("machine_kernel", platform.release())
    if len(df) > 1:
        fig("machine_disk", " ".join(df[1].split()))


def _drop_file_cache(path: Path) -> None:
    """Evict a file's clean pages from the page cache (no root needed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_tree_cache(root: Path) -> int:
    os.sync()  # dirty pages cannot be evicted; write them back first
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            _drop_file_cache(Path(dirpath) / name)
            n += 1
    return n


def disk_bandwidth(bench_dir: Path, nbytes: int) -> tuple[float, float, float]:
    """Sequential write (1 MiB writes, fsync at the end), cold read (pages evicted
    with fadvise DONTNEED, falling back to O_DIRECT check), cached re-read. MB/s."""
    path = bench_dir / "disk-test.bin"
    chunk = 1 << 20
    buf = os.urandom(chunk)
    n = nbytes // chunk
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0 = time.monotonic()
    for _ in range(n):
        os.write(fd, buf)
    os.fsync(fd)
    t_w = time.monotonic() - t0
    os.close(fd)
    write_mbs = n * chunk / t_w / MB

    def read_all(flags: int) -> float:
        fd = os.open(path, os.O_RDONLY | flags)
        m = mmap.mmap(-1, 4 * chunk)  # page-aligned buffer, valid for O_DIRECT
        total = 0
        t0 = time.monotonic()
        while True:
            r = os.readv(fd, [m])
            if r <= 0:
                break
            total += r
        dt = time.monotonic() - t0
        os.close(fd)
        m.close()
        return total / dt / MB

    try:
        read_cold = read_all(getattr(os, "O_DIRECT", 0))
    except OSError:
        _drop_file_cache(path)
        read_cold = read_all(0)
    read_all(0)  # populate the page cache
    read_cached = read_all(0)
    path.unlink()
    return write_mbs, read_cold, read_cached


def _loop_sink(port: int, q) -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", port))
    ls.listen(1)
    q.put("ready")
    c, _ = ls.accept()
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    total = 0
    while True:
        r = c.recv_into(mv)
        if r == 0:
            break
        total += r
    q.put(total)
    c.close()
    ls.close()


def loopback_bandwidth(nbytes: int) -> float:
    """One TCP stream over 127.0.0.1 between two Python processes, MB/s."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    p = ctx.Process(daemon=True, target=_loop_sink, args=(port, q))
    p.start()
    q.get(timeout=30)
    s = socket.create_connection(("127.0.0.1", port))
    buf = os.urandom(1 << 20)
    n = nbytes // len(buf)
    t0 = time.monotonic()
    for _ in range(n):
        s.sendall(buf)
    s.shutdown(socket.SHUT_WR)
    total = q.get(timeout=120)
    dt = time.monotonic() - t0
    s.close()
    p.join(10)
    return total / dt / MB


# ----------------------------------------------------------------- broker
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))
    except OSError:
        pass


class Broker:
    def __init__(self, binary: Path, base: Path, store: str | None, extra: list[str]):
        self.binary = Path(binary).resolve()
        self.base = base
        self.data_dir = base / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = store or f"file://{(base / 'objects').resolve()}"
        self.store_dir = Path(self.store[len("file://"):]) if self.store.startswith("file://") else None
        if self.store_dir:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.port = free_port()
        self.log_path = base / "broker.log"
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [str(self.binary), "serve", "--listen", self.bootstrap, "--advertise", self.bootstrap,
               "--data-dir", str(self.data_dir), "--store", self.store, *self.extra]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info,openraft=warn")
        env.setdefault("STRATA_METRICS_LISTEN", "none")  # several brokers may share the machine
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        logf = open(self.log_path, "ab", buffering=0)
        logf.write(f"\n===== bench: {' '.join(cmd)}\n".encode())
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(self.base), preexec_fn=_die_with_parent)
        logf.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("broker did not start listening within 30 s")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            note("broker did not stop within 30 s of SIGTERM; SIGKILL")
            self.proc.kill()
            rc = self.proc.wait(10)
        self.proc = None
        return rc

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def disk_read_bytes(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/io") as f:
                for line in f:
                    if line.startswith("read_bytes:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return -1

    def log_since_start(self) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def segment_objects(self) -> int:
        if not self.store_dir:
            return -1
        return sum(len(files) for _, _, files in os.walk(self.store_dir))

    def store_bytes(self) -> int:
        if not self.store_dir:
            return -1
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(self.store_dir) for f in files)


class Phase:
    """Samples broker CPU (and disk reads) around a phase."""

    def __init__(self, broker: Broker):
        self.b = broker

    def __enter__(self):
        self.cpu0 = self.b.cpu_seconds()
        self.rd0 = self.b.disk_read_bytes()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        if self.b.proc.poll() is not None:
            raise RuntimeError(f"broker exited with {self.b.proc.returncode} during the phase; see {self.b.log_path}")
        self.wall = time.monotonic() - self.t0
        self.cpu = self.b.cpu_seconds() - self.cpu0
        self.disk_read = self.b.disk_read_bytes() - self.rd0
        return False


# ----------------------------------------------------------------- clients
def _values(size: int, n: int = 64) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


def _producer_conf(bootstrap: str, args: dict) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": args["linger_ms"],
        "batch.size": args["batch_size"],
        "message.max.bytes": max(1000000, args["batch_size"] + 65536),
        "compression.type": "none",
        "queue.buffering.max.kbytes": 1048576,
        "queue.buffering.max.messages": 1000000,
        "enable.idempotence": False,
    }


def _producer_mode(conf: dict) -> str:
    """How a producer config writes, for the `*_mode` figures."""
    if conf.get("transactional.id"):
        return "transactional (idempotent)"
    return "idempotent" if conf.get("enable.idempotence") else "plain (enable.idempotence=false)"


def _txn_producer_conf(bootstrap: str, args: dict, txn_id: str) -> dict:
    """The throughput phase's settings, as a transactional producer (which librdkafka
    makes idempotent: at most 5 requests in flight per broker)."""
    return {**_producer_conf(bootstrap, args), "enable.idempotence": True, "transactional.id": txn_id}


def _kafka_error_text(e: Exception) -> str:
    err = e.args[0] if e.args else None
    if hasattr(err, "name") and hasattr(err, "str"):
        return f"{err.name()}: {err.str()}"
    return str(e)


def _txn_producer(bootstrap, topic, nrec, args, txn_id, barrier, q) -> None:
    """Like _throughput_producer, in transactions: init_transactions(), then
    begin / produce args["txn_records"] records / commit_transaction(), the last one
    with what is left. Reports the time of every commit_transaction() call."""
    from confluent_kafka import KafkaException, Producer

    errors = [0, ""]

    def on_err(err, msg):
        if err is not None:
            errors[0] += 1
            errors[1] = str(err)

    import logging

    class Gate(logging.Handler):
        """librdkafka's log lines, to stderr as usual, except during init_transactions():
        its failure is reported in one line by the parent, not also as TXNERR/FATAL lines."""
        quiet = False

        def emit(self, record):
            if not self.quiet:
                sys.stderr.write(f"%{record.levelname}|{txn_id}| {record.getMessage()}\n")

    gate = Gate()
    log = logging.getLogger(f"bench.{txn_id}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(gate)
    conf = _txn_producer_conf(bootstrap, args, txn_id)
    if txn_id.startswith("idempotent"):  # the comparison phase: same producer, no transactions
        del conf["transactional.id"]
    transactional = "transactional.id" in conf
    conf["delivery.report.only.error"] = True
    conf["on_delivery"] = on_err
    conf["logger"] = log
    p = Producer(conf)
    p.list_topics(topic, timeout=20)
    gate.quiet = True
    try:
        if transactional:
            p.init_transactions(args["txn_init_timeout"])
    except KafkaException as e:
        q.put({"init_error": _kafka_error_text(e)})
        barrier.abort()
        return
    p.poll(0)  # serves the log lines queued during init (still quiet)
    gate.quiet = False
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        return  # another producer (or the parent) gave up
    vals = _values(args["record_size"])
    produce = p.produce
    per_txn = max(1, args["txn_records"])
    commit_ms: list[float] = []
    committed = 0
    fail = ""
    t0 = time.monotonic()
    i = 0
    try:
        while i < nrec:
            n = min(per_txn, nrec - i)
            if transactional:
                p.begin_transaction()
            for k in range(i, i + n):
                v = vals[k & 63]
                while True:
                    try:
                        produce(topic, v)
                        break
                    except BufferError:
                        p.poll(0.01)
                if (k & 4095) == 0:
                    p.poll(0)
            c0 = time.monotonic()
            if transactional:
                p.commit_transaction(args["txn_commit_timeout"])  # flushes the transaction's records first
            elif p.flush(args["txn_commit_timeout"]):
                raise KafkaException("records not delivered in time")
            commit_ms.append((time.monotonic() - c0) * 1000)
            committed += n
            i += n
    except KafkaException as e:
        fail = _kafka_error_text(e)
        try:
            if e.args and e.args[0].txn_requires_abort():
                p.abort_transaction(30)
        except KafkaException:
            pass
    t1 = time.monotonic()
    left = p.flush(60)
    q.put({"t0": t0, "t1": t1, "n": committed, "commit_ms": commit_ms, "fail": fail, "errors": errors[0],
           "last_error": errors[1], "undelivered": left, "cpu": time.process_time()})


def _throughput_producer(bootstrap, topic, nrec, args, barrier, q) -> None:
    from confluent_kafka import Producer

    errors = [0, ""]

    def on_err(err, msg):
        if err is not None:
            errors[0] += 1
            errors[1] = str(err)

    conf = _producer_conf(bootstrap, args)
    conf["delivery.report.only.error"] = True
    conf["on_delivery"] = on_err
    p = Producer(conf)
    p.list_topics(topic, timeout=20)
    vals = _values(args["record_size"])
    produce = p.produce
    barrier.wait()
    t0 = time.monotonic()
    for i in range(nrec):
        v = vals[i & 63]
        while True:
            try:
                produce(topic, v)
                break
            except BufferError:
                p.poll(0.01)
        if (i & 4095) == 0:
            p.poll(0)
    left = p.flush(600)
    t1 = time.monotonic()
    cpu = time.process_time()
    q.put({"t0": t0, "t1": t1, "n": nrec, "errors": errors[0], "last_error": errors[1],
           "undelivered": left, "cpu": cpu})


def _drain_consumer(bootstrap, topic, starts: dict, ends: dict, args, q, ready, isolation=None) -> None:
    """Read partitions from starts[p] up to ends[p] (exclusive); report bytes and time.
    isolation: None leaves librdkafka's isolation.level default (read_committed), which
    the plain phases keep. An explicit "read_committed" also takes a partition's EOF as its
    end: the last offset of a transactional log is a commit marker, never delivered."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-drain-{os.getpid()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": args["fetch_max_bytes"],
        "max.partition.fetch.bytes": args["partition_fetch_bytes"],
        "queued.max.messages.kbytes": 262144,
        "enable.partition.eof": False,
    }
    if isolation is not None:
        conf["isolation.level"] = isolation
        conf["enable.partition.eof"] = isolation == "read_committed"
    c = Consumer(conf)
    c.assign([TopicPartition(topic, int(p), int(o)) for p, o in starts.items()])
    remaining = {int(p): int(ends[p]) for p in starts if int(ends[p]) > int(starts[p])}
    ready.wait()
    t_ready = time.monotonic()
    t0 = None
    nbytes = nrec = 0
    errors = 0
    last_progress = t_ready
    while remaining:
        msgs = c.consume(10000, 1.0)
        now = time.monotonic()
        if not msgs:
            if now - last_progress > 60:
                break
            continue
        last_progress = now
        if t0 is None:
            t0 = now  # throughput is timed from the first record (the first fetch round trip is reported apart)
            first = sum(len(m) for m in msgs if not m.error())
        for m in msgs:
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    remaining.pop(m.partition(), None)
                    continue
                errors += 1
                continue
            nbytes += len(m)
            nrec += 1
            p = m.partition()
            end = remaining.get(p)
            if end is not None and m.offset() >= end - 1:
                del remaining[p]
    t1 = time.monotonic()
    c.close()
    if t0 is None:
        t0, first = t1, 0
    q.put({"t0": t0, "t1": t1, "t_ready": t_ready, "first_bytes": first, "bytes": nbytes, "records": nrec, "errors": errors,
           "unfinished": len(remaining), "cpu": time.process_time()})


def _rate_producer(bootstrap, topic, rate_rps, warmup_s, dur_s, args, ready, q) -> None:
    from confluent_kafka import Producer

    lat: list[int] = []
    errors = [0]
    mono = time.monotonic_ns

    def on_dr(err, msg):
        if err is not None:
            errors[0] += 1
            return
        v = msg.value()
        if v[8] == 1:
            lat.append(mono() - int.from_bytes(v[:8], "little"))

    p = Producer({**_producer_conf(bootstrap, args), "on_delivery": on_dr})
    p.list_topics(topic, timeout=20)
    body = os.urandom(args["record_size"] - 9)
    ready.wait()
    total_s = warmup_s + dur_s
    t_start = time.monotonic()
    sent = measured = 0
    behind_max = 0
    while True:
        el = time.monotonic() - t_start
        if el >= total_s:
            break
        target = int(el * rate_rps)
        behind_max = max(behind_max, target - sent)
        flag = b"\x01" if el >= warmup_s else b"\x00"
        while sent < target:
            ts = mono()
            while True:
                try:
                    p.produce(topic, ts.to_bytes(8, "little") + flag + body)
                    break
                except BufferError:
                    p.poll(0.001)
            sent += 1
            if flag == b"\x01":
                measured += 1
        p.poll(0.001)
    achieved = sent / (time.monotonic() - t_start)
    p.flush(120)
    q.put({"lat": lat, "sent": sent, "measured": measured, "errors": errors[0],
           "achieved_rps": achieved, "behind_max": behind_max})


def _e2e_consumer(bootstrap, topic, partitions, args, ready, q, stop) -> None:
    from confluent_kafka import Consumer, TopicPartition, OFFSET_END

    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-e2e-{os.getpid()}",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": args["fetch_wait_ms"],
        "enable.partition.eof": False,
    })
    c.assign([TopicPartition(topic, p, OFFSET_END) for p in range(partitions)])
    deadline = time.monotonic() + 20
    # Resolve the end offsets before the producer starts.
    while time.monotonic() < deadline:
        c.consume(100, 0.2)
        try:
            pos = c.position([TopicPartition(topic, p) for p in range(partitions)])
            if all(tp.offset >= 0 for tp in pos):
                break
        except Exception:
            pass
    ready.set()
    lat: list[int] = []
    mono = time.monotonic_ns
    idle_since = None
    while True:
        # poll(), not consume(n, t): consume waits for n messages or t, which would add
        # the client's own batching delay to every receipt time.
        m = c.poll(0.1)
        msgs = [m] if m is not None else []
        now = mono()
        for m in msgs:
            if m.error():
                continue
            v = m.value()
            if v[8] == 1:
                lat.append(now - int.from_bytes(v[:8], "little"))
        if stop.is_set():
            if msgs:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 3:
                break
    c.close()
    q.put({"lat": lat})


# ----------------------------------------------------------------- phases
def create_topic(bootstrap: str, partitions: int, topic: str = TOPIC, config: dict | None = None) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    a = AdminClient({"bootstrap.servers": bootstrap})
    fs = a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})])
    for _t, f in fs.items():
        f.result(30)
    md = a.list_topics(topic, timeout=20)
    got = len(md.topics[topic].partitions)
    if got != partitions:
        raise RuntimeError(f"topic has {got} partitions, wanted {partitions}")


def create_acls(bootstrap: str, n: int, txn: bool = False) -> None:
    """`n` ACLs, so that every request pays for a real authorizer lookup: ALLOW ALL for
    everyone on the bench topic and on every group, and decoys (literal and prefixed
    topic ACLs of other principals; a quarter of the prefixes share the topic's first
    letters, so the prefix walk finds candidates that do not apply)."""
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                       ResourcePatternType, ResourceType)

    allow = [AclBinding(ResourceType.TOPIC, TOPIC, ResourcePatternType.LITERAL, "User:*", "*",
                        AclOperation.ALL, AclPermissionType.ALLOW),
             AclBinding(ResourceType.GROUP, "*", ResourcePatternType.LITERAL, "User:*", "*",
                        AclOperation.ALL, AclPermissionType.ALLOW)]
    if txn:  # --txn: its topic and the transactional ids
        allow += [AclBinding(ResourceType.TOPIC, t, ResourcePatternType.LITERAL, "User:*", "*",
                             AclOperation.ALL, AclPermissionType.ALLOW) for t in (TXN_TOPIC, IDEM_TOPIC)]
        allow += [AclBinding(ResourceType.TRANSACTIONAL_ID, "*", ResourcePatternType.LITERAL, "User:*", "*",
                             AclOperation.ALL, AclPermissionType.ALLOW)]
    decoys = []
    for i in range(max(0, n - len(allow))):
        if i % 2:
            name, pattern = f"decoy-{i}", ResourcePatternType.LITERAL
        else:
            name = (TOPIC[:3] if i % 4 == 0 else "dec") + f"-p{i}-"
            pattern = ResourcePatternType.PREFIXED
        decoys.append(AclBinding(ResourceType.TOPIC, name, pattern, f"User:user{i % 97}", "*",
                                 AclOperation.READ, AclPermissionType.ALLOW))
    a = AdminClient({"bootstrap.servers": bootstrap})
    bindings = allow + decoys
    for start in range(0, len(bindings), 1000):
        for _b, f in a.create_acls(bindings[start:start + 1000]).items():
            f.result(60)


def watermarks(bootstrap: str, partitions: int, topic: str = TOPIC) -> dict[int, tuple[int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-wm", "enable.auto.commit": False})
    out = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=20) for p in range(partitions)}
    c.close()
    return out


def collect(q, procs, n: int, timeout: float) -> list:
    """n results from q; fail fast (instead of hanging) if a worker dies first."""
    import queue as _queue
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        try:
            out.append(q.get(timeout=1.0))
            continue
        except _queue.Empty:
            pass
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(f"worker {dead[0].name} exited with {dead[0].exitcode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers gave no result within {timeout:.0f} s")
    return out


def run_drain(ctx, bootstrap, starts, ends, nconsumers, args, topic: str = TOPIC, isolation=None) -> dict:
    parts = sorted(starts)
    groups = [parts[i::nconsumers] for i in range(nconsumers)]
    q = ctx.Queue()
    ready = ctx.Event()
    procs = []
    for g in groups:
        if not g:
            continue
        pr = ctx.Process(daemon=True, target=_drain_consumer, args=(bootstrap, topic, {p: starts[p] for p in g},
                                                         {p: ends[p] for p in g}, args, q, ready, isolation))
        pr.start()
        procs.append(pr)
    time.sleep(1.0)  # let the consumers connect and resolve their assignment
    ready.set()
    res = collect(q, procs, len(procs), 900)
    for pr in procs:
        pr.join(30)
    t0 = min(r["t0"] for r in res)
    t1 = max(r["t1"] for r in res)
    # bytes of each consumer's first batch arrived at t0, so they don't count towards the rate
    return {"bytes": sum(r["bytes"] - r["first_bytes"] for r in res), "total_bytes": sum(r["bytes"] for r in res),
            "records": sum(r["records"] for r in res),
            "first_record_s": max(r["t0"] - r["t_ready"] for r in res),
            "secs": max(t1 - t0, 1e-6), "errors": sum(r["errors"] for r in res),
            "unfinished": sum(r["unfinished"] for r in res), "client_cpu": sum(r["cpu"] for r in res)}


# ----------------------------------------------------------------- soak
# A long run at a fixed, modest rate over many partitions (e.g. 1000 partitions x 1
# produce request/s each, 1 KiB records) to watch what must not grow without bound:
# index entries, metadata state and snapshot, broker RSS, objects in the store.
SOAK_GROWTH_TARGET_PCT = 10.0


def read_stats(path: Path, attempts: int = 5) -> dict | None:
    """The broker's <data-dir>/stats.json (rewritten atomically every 5 s): None when
    missing; a half-written or unparsable file is retried a few times."""
    for i in range(attempts):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            text = ""
        try:
            d = json.loads(text)
            if isinstance(d, dict):
                return d
        except ValueError:
            pass
        time.sleep(0.05 * (i + 1))
    return None


def store_walk(store_dir: Path | None) -> dict | None:
    """Objects and bytes under segments/ (flush objects), compacted/ (per-partition
    segments) and in the whole store directory."""
    if store_dir is None:
        return None
    out = {"flush_objects": 0, "flush_bytes": 0, "compacted_objects": 0, "compacted_bytes": 0,
           "total_objects": 0, "total_bytes": 0}
    for dirpath, _dirs, files in os.walk(store_dir):
        rel = Path(dirpath).relative_to(store_dir).parts
        kind = {"segments": "flush", "compacted": "compacted"}.get(rel[0] if rel else "")
        for name in files:
            try:
                size = os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                continue  # deleted while walking (GC)
            out["total_objects"] += 1
            out["total_bytes"] += size
            if kind:
                out[f"{kind}_objects"] += 1
                out[f"{kind}_bytes"] += size
    return out


def raft_snapshot_bytes(data_dir: Path) -> int | None:
    for name in ("snapshot.bin", "snapshot.json"):
        try:
            return (data_dir / "raft" / name).stat().st_size
        except OSError:
            continue
    return None


def _soak_producer(bootstrap, topic, parts, rate, record_size, counters, ready, start, stop, q,
                   txn_id=None, compact=False) -> None:
    """Paces one record per partition every 1/rate s over `parts` (one produce call of
    one record each; linger.ms=0, so each goes out at once), round-robin on a schedule
    that catches up if it falls behind. counters: [sent, acked, errors, acked_bytes,
    behind_max]. With `txn_id` (--soak-txn) the producer is transactional and commits
    once a second, so every partition it writes gets a marker each second. With
    `compact` (--soak-compact) records are keyed (SOAK_KEYS keys a partition) and, if
    transactional, every SOAK_ABORT_EVERY-th transaction is aborted."""
    from confluent_kafka import Producer

    last_error = [""]

    def on_dr(err, msg):
        if err is not None:
            counters[2] += 1
            last_error[0] = str(err)
        else:
            counters[1] += 1
            counters[3] += len(msg.value())

    conf = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 0,
        "compression.type": "none",
        "message.timeout.ms": 300000,
        "on_delivery": on_dr,
    }
    if txn_id:
        conf["transactional.id"] = txn_id
        conf["message.timeout.ms"] = 60000  # librdkafka: at most transaction.timeout.ms
    p = Producer(conf)
    p.list_topics(topic, timeout=30)
    if txn_id:
        p.init_transactions(60)
        p.begin_transaction()
    last_commit = time.monotonic()
    vals = _values(record_size)
    ready.set()
    start.wait()
    total_rate = rate * len(parts)
    n = len(parts)
    t0 = time.monotonic()
    sent = 0
    produce = p.produce
    keys = [b"k%d" % k for k in range(SOAK_KEYS)]
    ended = 0
    while not stop.is_set():
        now = time.monotonic()
        due = int((now - t0) * total_rate)
        if due - sent > counters[4]:
            counters[4] = due - sent
        while sent < due:
            try:
                key = keys[(sent // n) % SOAK_KEYS] if compact else None
                produce(topic, vals[sent & 63], key=key, partition=parts[sent % n])
            except BufferError:
                p.poll(0.01)
                break
            sent += 1
            counters[0] = sent
        next_due = t0 + (sent + 1) / total_rate
        p.poll(max(0.0, min(next_due - time.monotonic(), 0.02)))
        if txn_id and time.monotonic() - last_commit >= 1.0:
            ended += 1
            try:
                if compact and ended % SOAK_ABORT_EVERY == 0:
                    # Delivered first: an abort purges queued records, and the gap in
                    # their sequence numbers would fail the next transaction.
                    p.flush(120)
                    p.abort_transaction(120)
                else:
                    p.commit_transaction(120)
            except Exception as e:  # noqa: BLE001 - counted, the soak goes on
                counters[2] += 1
                last_error[0] = f"commit: {e}"
                p.abort_transaction(120)
            p.begin_transaction()
            last_commit = time.monotonic()
    t1 = time.monotonic()
    if txn_id:
        p.commit_transaction(120)
    left = p.flush(120)
    q.put({"sent": sent, "secs": t1 - t0, "undelivered": left, "last_error": last_error[0],
           "cpu": time.process_time()})


def _fmt_growth(a, b):
    if a is None or b is None or not a:
        return "n/a"
    return (b - a) / a * 100.0


def run_soak(a, ctx) -> int:
    minutes, nparts, rate = a.soak_minutes, a.soak_partitions, a.soak_rate
    every = a.soak_report_seconds
    nprod = max(1, min(a.soak_producers, nparts))
    disk_bytes = a.disk_bytes if a.disk_bytes is not None else (
        parse_size("256MiB") if minutes < 10 else parse_size("1GiB"))
    cargs = {"record_size": a.record_size, "fetch_max_bytes": 52428800, "partition_fetch_bytes": 4 << 20}
    extra = list(a.broker_arg) + shlex.split(a.broker_args or "")

    if a.dir.exists():
        shutil.rmtree(a.dir)
    a.dir.mkdir(parents=True)
    t_bench = time.monotonic()
    note(f"strata soak: {minutes:g} min, {nparts} partitions x {rate:g} produce requests/s of one "
         f"{a.record_size} B record, {nprod} producer processes ({'transactional, a commit a second' if a.soak_txn else 'idempotent'}, acks=all, linger.ms=0), "
         f"{'compacted topic, ' if a.soak_compact else ''}"
         f"report every {every:g} s, broker args {extra or 'none'}, dir={a.dir}")
    from confluent_kafka import version, libversion
    fig("client", f"confluent-kafka {version()[0]} librdkafka {libversion()[0]}")
    machine_info(a.dir)
    if a.skip_machine:
        disk_r = float("nan")
    else:
        disk_w, disk_r, disk_rc = disk_bandwidth(a.dir, disk_bytes)
        fig("disk_write_seq", disk_w, "MB/s")
        fig("disk_read_seq_cold", disk_r, "MB/s")
        fig("disk_read_seq_cached", disk_rc, "MB/s")

    broker = Broker(a.broker_bin, a.dir, a.store, extra)
    broker.start()
    fig("broker_store", broker.store)
    stats_path = broker.data_dir / "stats.json"
    problems: list[str] = []
    samples: list[dict] = []
    procs = []
    stop = ctx.Event()
    try:
        create_topic(broker.bootstrap, nparts, config=SOAK_COMPACT_CONFIG if a.soak_compact else None)
        groups = [list(range(nparts))[i::nprod] for i in range(nprod)]
        counters = [ctx.Array("q", 5, lock=False) for _ in groups]
        q = ctx.Queue()
        start = ctx.Event()
        readies = []
        for g, cnt in zip(groups, counters):
            ready = ctx.Event()
            readies.append(ready)
            pr = ctx.Process(daemon=True, target=_soak_producer,
                             args=(broker.bootstrap, TOPIC, g, rate, a.record_size, cnt, ready, start, stop, q,
                                   f"soak-{os.getpid()}-{len(procs)}" if a.soak_txn else None, a.soak_compact))
            pr.start()
            procs.append(pr)
        for r in readies:
            if not r.wait(60):
                raise RuntimeError("a soak producer did not get ready within 60 s")
        start.set()
        t0 = time.monotonic()
        fig("soak_target_rate", rate * nparts, "requests/s")
        fig("soak_producer_mode", "transactional, a commit a second" if a.soak_txn else "idempotent")

        def totals():
            return {k: sum(c[i] for c in counters)
                    for i, k in enumerate(("sent", "acked", "errors", "acked_bytes"))} | {
                "behind_max": max(c[4] for c in counters)}

        prev = {"t": t0, "acked": 0, "cbw": 0}  # the broker's counters start at 0 with it
        deadline = t0 + minutes * 60
        k = 0
        while True:
            k += 1
            wake = min(t0 + k * every, deadline)
            while time.monotonic() < wake:
                time.sleep(min(1.0, max(0.0, wake - time.monotonic())))
                if broker.proc.poll() is not None:
                    raise RuntimeError(f"broker exited with {broker.proc.returncode}; see {broker.log_path}")
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"soak producer exited with {dead[0].exitcode}")
            now = time.monotonic()
            el = now - t0
            tot = totals()
            st = read_stats(stats_path)
            walk = store_walk(broker.store_dir)
            s = {"elapsed": el, "minute": el / 60, **tot, "rss_mib": broker.rss_mib(),
                 "raft_snapshot_bytes": raft_snapshot_bytes(broker.data_dir), "stats": st, "walk": walk}
            label = f"m{round(el / 60)}" if every % 60 == 0 else f"s{round(el)}"
            pre = f"soak_{label}"
            fig(f"{pre}_minute", el / 60, "min")
            fig(f"{pre}_records_produced", tot["sent"])
            fig(f"{pre}_records_acked", tot["acked"])
            fig(f"{pre}_produce_errors", tot["errors"])
            dt = now - prev["t"]
            fig(f"{pre}_produce_rate", (tot["acked"] - prev["acked"]) / dt, "requests/s")
            fig(f"{pre}_produce_rate_per_partition", (tot["acked"] - prev["acked"]) / dt / nparts, "requests/s")
            fig(f"{pre}_producer_behind_max", tot["behind_max"], "records")
            if st is not None:
                parts_n = st.get("partitions") or nparts
                s["index_entries"] = st.get("index_entries")
                s["snapshot_bytes"] = st.get("snapshot_bytes")
                fig(f"{pre}_index_entries", st.get("index_entries", "n/a"))
                fig(f"{pre}_index_entries_per_partition_max", st.get("max_index_entries_per_partition", "n/a"))
                if isinstance(st.get("index_entries"), (int, float)):
                    fig(f"{pre}_index_entries_per_partition_mean", st["index_entries"] / max(parts_n, 1))
                fig(f"{pre}_state_bytes", st.get("state_bytes", "n/a"), "B")
                fig(f"{pre}_snapshot_bytes", st.get("snapshot_bytes", "n/a"), "B")
                fig(f"{pre}_stats_objects", f"{st.get('objects', '?')} ({st.get('flush_objects', '?')} flush, "
                    f"{st.get('segment_objects', '?')} segment, {st.get('garbage_objects', '?')} garbage)")
                cbw = st.get("compaction_bytes_written")
                if isinstance(cbw, (int, float)) and prev["cbw"] is not None:
                    fig(f"{pre}_compaction_throughput", (cbw - prev["cbw"]) / dt / MB, "MB/s")
                else:
                    fig(f"{pre}_compaction_throughput", "n/a" if cbw is None else 0.0, "MB/s")
                prev["cbw"] = cbw if isinstance(cbw, (int, float)) else None
                fig(f"{pre}_compaction_jobs", st.get("compaction_jobs", "n/a"))
                fig(f"{pre}_compaction_bytes_read", st.get("compaction_bytes_read", "n/a"), "B")
                fig(f"{pre}_compaction_bytes_written", "n/a" if cbw is None else cbw, "B")
                fig(f"{pre}_gc_deleted", st.get("gc_deleted", "n/a"))
                gb = tot["acked_bytes"] / GB
                for key, name in (("store_puts", "puts"), ("store_gets", "gets")):
                    v = st.get(key)
                    fig(f"{pre}_store_{name}_per_gb", v / gb if isinstance(v, (int, float)) and gb > 0 else "n/a",
                        f"{name[:-1].upper()}/GB")
                fig(f"{pre}_store_requests", f"puts={st.get('store_puts', '?')} gets={st.get('store_gets', '?')} "
                    f"deletes={st.get('store_deletes', '?')} lists={st.get('store_lists', '?')}")
            else:
                fig(f"{pre}_stats", "n/a", f"({stats_path.name} missing: broker without stats)")
            rsb = s["raft_snapshot_bytes"]
            fig(f"{pre}_raft_snapshot_file", rsb if rsb is not None else "n/a", "B")
            fig(f"{pre}_broker_rss", s["rss_mib"], "MiB")
            if st is not None and "heap_allocated_bytes" in st:
                # jemalloc's view: live heap, and what the allocator holds (RSS minus code).
                fig(f"{pre}_heap_allocated", st["heap_allocated_bytes"] / 2**20, "MiB")
                fig(f"{pre}_heap_resident", st["heap_resident_bytes"] / 2**20, "MiB")
            if walk is not None:
                fig(f"{pre}_store_flush_objects", walk["flush_objects"])
                fig(f"{pre}_store_flush_bytes", walk["flush_bytes"] / MB, "MB")
                fig(f"{pre}_store_compacted_objects", walk["compacted_objects"])
                fig(f"{pre}_store_compacted_bytes", walk["compacted_bytes"] / MB, "MB")
                fig(f"{pre}_store_objects", walk["total_objects"])
                fig(f"{pre}_store_bytes", walk["total_bytes"] / MB, "MB")
            samples.append(s)
            prev.update(t=now, acked=tot["acked"])
            if now >= deadline - 0.5:
                break

        stop.set()
        res = collect(q, procs, len(procs), 180)
        for pr in procs:
            pr.join(30)
        tot = totals()
        secs = max(r["secs"] for r in res)
        fig("soak_records_sent", tot["sent"])
        fig("soak_records_acked", tot["acked"])
        fig("soak_produce_rate_achieved", tot["acked"] / secs, "requests/s")
        fig("soak_produce_rate_vs_target", tot["acked"] / secs / (rate * nparts), "ratio")
        fig("soak_produce_volume", tot["acked_bytes"] / MB, "MB")
        fig("soak_producer_client_cpu", sum(r["cpu"] for r in res) / secs, "cores")
        errs = tot["errors"] + sum(r["undelivered"] for r in res)
        fig("soak_produce_errors", errs)
        if errs:
            problems.append(f"soak produce: {errs} errors/undelivered, last: {[r['last_error'] for r in res if r['last_error']]}")

        # ---- growth between minute 10 (or the first sample of a short run) and the last sample
        base = next((s for s in samples if s["minute"] >= 10 - 1e-6), None)
        if base is None or base is samples[-1]:
            base = samples[0]
            note(f"run shorter than 10 minutes: growth measured from the first sample "
                 f"(minute {base['minute']:.2f}) instead of minute 10")
        last = samples[-1]
        fig("soak_growth_from", base["minute"], "min")
        fig("soak_growth_to", last["minute"], "min")
        # Compaction makes these series swing (flush chunks pile up, then are merged), so
        # two single points can land on a trough and a peak: the verdict compares the
        # medians of the two halves of the samples from `base` on; the point-to-point
        # figures are printed too.
        later = [s for s in samples if s["minute"] >= base["minute"] - 1e-6]
        half = len(later) // 2
        first_half, second_half = (later[:half], later[half:]) if half else ([base], [last])
        fig("soak_growth_median_windows",
            f"{first_half[0]['minute']:.0f}-{first_half[-1]['minute']:.0f} vs "
            f"{second_half[0]['minute']:.0f}-{second_half[-1]['minute']:.0f}", "min")

        def median(window, key):
            vals = [s.get(key) for s in window if s.get(key) is not None]
            return statistics.median(vals) if vals else None

        verdicts = []
        for name, key in (("index_entries", "index_entries"), ("snapshot_bytes", "snapshot_bytes"),
                          ("raft_snapshot_file", "raft_snapshot_bytes"), ("broker_rss", "rss_mib")):
            g = _fmt_growth(base.get(key), last.get(key))
            fig(f"soak_growth_{name}", g, "%")
            gm = _fmt_growth(median(first_half, key), median(second_half, key))
            fig(f"soak_growth_median_{name}", gm, "%")
            if name != "raft_snapshot_file" and isinstance(gm, float):
                verdicts.append(gm < SOAK_GROWTH_TARGET_PCT)
        fig("soak_growth_target", f"< {SOAK_GROWTH_TARGET_PCT:g}", "%")
        fig("soak_growth_within_target", ("yes" if all(verdicts) else "no") if verdicts else "n/a")

        # ---- catch-up read of the whole topic from offset 0: restarted broker (cold
        # cache), store files evicted from the page cache
        rc = broker.stop()
        if rc not in (0, None):
            problems.append(f"broker exited with {rc} on SIGTERM")
        broker.start()
        wm = watermarks(broker.bootstrap, nparts)
        starts = {p: wm[p][0] for p in wm}
        ends = {p: wm[p][1] for p in wm}
        total_log = sum(ends[p] - starts[p] for p in wm)
        if total_log < tot["acked"] and not a.soak_compact:
            problems.append(f"the topic holds {total_log} records, {tot['acked']} were acknowledged")
        if broker.store_dir:
            drop_tree_cache(broker.store_dir)
        # Transactional: read_committed, ending at each partition's end (its last offset is
        # a marker, never delivered), and every acknowledged record, not every offset.
        isolation = "read_committed" if a.soak_txn else None
        want = tot["acked"] if a.soak_txn else total_log
        if a.soak_compact:  # the cleaner keeps the latest committed record of each key
            want = nparts * SOAK_KEYS
        with Phase(broker) as ph:
            r = run_drain(ctx, broker.bootstrap, starts, ends, a.consumers, cargs, TOPIC, isolation)
        # timed from each consumer's first batch, as in the benchmark's catch-up phase; a
        # log small enough to arrive in the first batches (a smoke run) has no such figure
        cu_mbs = r["bytes"] / r["secs"] / MB if r["bytes"] > 0 else float("nan")
        fig("soak_catchup_records", r["records"])
        fig("soak_catchup_volume", r["total_bytes"] / MB, "MB")
        fig("soak_catchup_first_record", r["first_record_s"] * 1000, "ms")
        fig("soak_catchup_throughput", cu_mbs, "MB/s")
        fig("soak_catchup_throughput_incl_first_fetch", r["total_bytes"] / (r["first_record_s"] + r["secs"]) / MB, "MB/s")
        fig("soak_catchup_vs_disk_read", cu_mbs / disk_r, "ratio")
        fig("soak_catchup_broker_cpu", ph.cpu / ph.wall, "cores")
        if r["errors"] or r["unfinished"] or r["records"] < want:
            problems.append(f"soak catch-up: {r['errors']} errors, {r['unfinished']} partitions not finished, "
                            f"{r['records']} of {want} records read")
    finally:
        stop.set()
        for pr in procs:
            if pr.is_alive():
                pr.join(5)
            if pr.is_alive():
                pr.kill()
        rc = broker.stop()
    if rc not in (0, None):
        problems.append(f"broker exited with {rc} on SIGTERM")
    full = broker.log_path.read_text(errors="replace")
    bad = [l for l in full.splitlines() if re.search(r"\b(WARN|ERROR)\b|panicked", l)]
    fig("broker_log_warn_error_lines", len(bad))
    for l in bad[:15]:
        note(f"broker log: {l[:300]}")
    for p in problems:
        note(f"PROBLEM: {p}")
    fig("bench_wall", time.monotonic() - t_bench, "s")
    if not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)
    else:
        note(f"kept {a.dir} (broker log: {broker.log_path})")
    return 1 if problems else 0


def _idle_producer(bootstrap, topic, rate_rps, warmup_s, dur_s, idempotent, record_size) -> dict:
    """Light load: one record per produce request (linger.ms=0, acks=all) at a fixed rate;
    returns the delivery latencies of the measured records (ms) and the count sent."""
    from confluent_kafka import Producer

    lat: list[float] = []
    errors = [0]

    def on_dr(err, msg, sent_ns, measured):
        if err is not None:
            errors[0] += 1
        elif measured:
            lat.append((time.monotonic_ns() - sent_ns) / 1e6)

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                  "enable.idempotence": idempotent, "compression.type": "none"})
    p.list_topics(topic, timeout=20)
    body = os.urandom(record_size)
    t_start = time.monotonic()
    sent = 0
    while True:
        el = time.monotonic() - t_start
        if el >= warmup_s + dur_s:
            break
        while sent < int(el * rate_rps):
            ts, measured = time.monotonic_ns(), el >= warmup_s
            p.produce(topic, body, on_delivery=lambda err, msg, ts=ts, m=measured: on_dr(err, msg, ts, m))
            sent += 1
        p.poll(0.0005)
    p.flush(60)
    return {"lat": sorted(lat), "errors": errors[0], "sent": sent}


def run_idle_latency(a) -> int:
    """--idle-latency: produce latency at light load, plain then idempotent producer."""
    if a.dir.exists():
        shutil.rmtree(a.dir)
    a.dir.mkdir(parents=True)
    broker = Broker(a.broker_bin, a.dir, a.store, a.broker_arg + shlex.split(a.broker_args))
    broker.start()
    note(f"idle latency: {a.idle_rate:g} records/s of {a.idle_record_size} B for {a.idle_seconds:g} s "
         f"(+2 s warm-up), linger.ms=0, acks=all, one partition; broker {a.broker_bin} {' '.join(broker.extra)}")
    problems = []
    try:
        create_topic(broker.bootstrap, 1)
        for name, idem in (("idle_produce_latency", False), ("idle_idempotent_produce_latency", True)):
            objs0 = broker.segment_objects()
            t0 = time.monotonic()
            r = _idle_producer(broker.bootstrap, TOPIC, a.idle_rate, 2.0, a.idle_seconds, idem, a.idle_record_size)
            wall = time.monotonic() - t0
            lat = r["lat"]
            fig(f"{name}_avg", sum(lat) / max(len(lat), 1), "ms")
            fig(f"{name}_p50", pct(lat, 50), "ms")
            fig(f"{name}_p99", pct(lat, 99), "ms")
            fig(f"{name}_max", lat[-1] if lat else float("nan"), "ms")
            fig(f"{name}_samples", len(lat))
            objs = broker.segment_objects() - objs0
            if objs >= 0:
                fig(f"{name}_puts_per_s", objs / wall, "PUT/s")
            if r["errors"]:
                problems.append(f"{name}: {r['errors']} produce errors")
    finally:
        broker.stop()
    for p in problems:
        note(f"PROBLEM: {p}")
    if not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)
    return 1 if problems else 0


def run_txn_phase(ctx, broker, a, cargs, per, base_mbs, problems) -> None:
    """--txn: the same volume twice, each on a fresh topic: first idempotent producers
    (flushing every --txn-records records, the comparison), then one transactional
    producer per process (transactional.id unique per process and run), per[i] records
    each, committed every --txn-records; then a read_committed drain of the transactional
    topic that must return every committed record."""
    idem_mbs = run_txn_produce(ctx, broker, a, cargs, per, problems, "idempotent", IDEM_TOPIC)
    if idem_mbs is None:
        return
    fig("idempotent_produce_vs_produce", idem_mbs / base_mbs, "ratio")
    txn_mbs = run_txn_produce(ctx, broker, a, cargs, per, problems, "txn", TXN_TOPIC)
    if txn_mbs is None:
        return
    fig("txn_produce_vs_produce", txn_mbs / base_mbs, "ratio")
    fig("txn_produce_vs_idempotent", txn_mbs / idem_mbs, "ratio")


def run_txn_produce(ctx, broker, a, cargs, per, problems, kind, topic) -> float | None:
    """One --txn produce phase (`kind` "txn" or "idempotent"); its MB/s, None if it failed.
    The transactional one is drained read_committed after."""
    import queue as _queue

    create_topic(broker.bootstrap, a.partitions, topic)
    run_id = f"{os.getpid()}-{int(time.time())}"
    q = ctx.Queue()
    barrier = ctx.Barrier(len(per) + 1)
    procs = [ctx.Process(daemon=True, target=_txn_producer,
                         args=(broker.bootstrap, topic, n, cargs,
                               f"{'idempotent' if kind == 'idempotent' else 'bench-txn'}-{run_id}-{i}", barrier, q))
             for i, n in enumerate(per)]
    for pr in procs:
        pr.start()
    conf = _txn_producer_conf(broker.bootstrap, cargs, "x")
    if kind == "idempotent":
        del conf["transactional.id"]
    fig(f"{kind}_produce_mode", f"{_producer_mode(conf)}, "
                                f"{'flush' if kind == 'idempotent' else 'commit'} every {a.txn_records} records")
    try:
        barrier.wait(timeout=cargs["txn_init_timeout"] + 60)
    except threading.BrokenBarrierError:
        for pr in procs:
            pr.join(10)
            if pr.is_alive():
                pr.kill()
        errs = []
        while True:
            try:
                r = q.get(timeout=1.0)
            except _queue.Empty:
                break
            if r.get("init_error") and r["init_error"] not in errs:
                errs.append(r["init_error"])
        msg = ("init_transactions() failed: " + "; ".join(errs)) if errs else \
            "the transactional producers were not ready in time"
        if any("TRANSACTIONAL_ID_AUTHORIZATION_FAILED" in e for e in errs):
            msg += " (does this broker support transactions?)"
        fig(f"{kind}_produce_throughput", "n/a", f"({kind} phase failed: {msg})")
        problems.append(f"{kind} phase failed: {msg}")
        return None
    with Phase(broker) as ph:
        res = collect(q, procs, len(procs), 1800)
    for pr in procs:
        pr.join(30)
    secs = max(r["t1"] for r in res) - min(r["t0"] for r in res)
    committed = sum(r["n"] for r in res)
    nbytes = committed * a.record_size
    mbs = nbytes / secs / MB
    commit_ms = sorted(x for r in res for x in r["commit_ms"])
    errs = sum(r["errors"] for r in res) + sum(r["undelivered"] for r in res)
    fig(f"{kind}_produce_volume", nbytes / MB, "MB")
    fig(f"{kind}_produce_seconds", secs, "s")
    fig(f"{kind}_produce_throughput", mbs, "MB/s")
    fig(f"{kind}_produce_records", committed / secs, "records/s")
    fig(f"{kind}_commits", len(commit_ms))
    fig(f"{kind}_commit_latency_p50", pct(commit_ms, 50), "ms")
    fig(f"{kind}_commit_latency_p99", pct(commit_ms, 99), "ms")
    fig(f"{kind}_commit_latency_max", commit_ms[-1] if commit_ms else float("nan"), "ms")
    fig(f"{kind}_produce_errors", errs)
    fig(f"{kind}_produce_client_cpu", sum(r["cpu"] for r in res) / secs, "cores")
    fig(f"{kind}_produce_broker_cpu", ph.cpu / secs, "cores")
    fails = sorted({r["fail"] for r in res if r["fail"]})
    if fails:
        problems.append(f"{kind} produce: {'; '.join(fails)} ({committed} of {sum(per)} records committed)")
    if errs:
        problems.append(f"{kind} produce: {errs} errors, last: {[r['last_error'] for r in res if r['last_error']]}")

    if kind != "txn":
        return mbs
    # ---- read_committed drain of the transactional topic: every committed record, once
    wm = watermarks(broker.bootstrap, a.partitions, topic)
    starts = {p: wm[p][0] for p in wm}
    ends = {p: wm[p][1] for p in wm}
    with Phase(broker) as ph:
        r = run_drain(ctx, broker.bootstrap, starts, ends, a.consumers, cargs, topic, "read_committed")
    fig("txn_drain_MBps", r["bytes"] / r["secs"] / MB if r["bytes"] > 0 else float("nan"), "MB/s")
    fig("txn_drain_records", r["records"])
    fig("txn_drain_broker_cpu", ph.cpu / r["secs"], "cores")
    if r["records"] != committed:
        problems.append(f"txn drain (read_committed): read {r['records']} records, {committed} were committed")
    if r["errors"] or r["unfinished"]:
        problems.append(f"txn drain: {r['errors']} errors, {r['unfinished']} partitions not finished")
    return mbs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~1 minute run: 256MiB volume, 8 s latency phase, 256MiB disk test")
    ap.add_argument("--volume", type=parse_size, default=None, help="bytes to produce in the throughput phase [2GiB]")
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=12)
    ap.add_argument("--producers", type=int, default=2, help="producer processes in the throughput phase [2]")
    ap.add_argument("--consumers", type=int, default=2, help="consumer processes in the consume phases [2]")
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1000000)
    ap.add_argument("--rate", type=float, default=20.0, help="MB/s for the latency phase [20]")
    ap.add_argument("--latency-seconds", type=float, default=None, help="measured seconds of the latency phase [20]")
    ap.add_argument("--fetch-wait-ms", type=int, default=500, help="e2e consumer fetch.wait.max.ms [500, librdkafka default]")
    ap.add_argument("--tail-window", type=parse_size, default=parse_size("192MiB"),
                    help="bytes the tail reader re-reads at the head of the log (must fit the broker cache, 256MiB by default) [192MiB]")
    ap.add_argument("--disk-bytes", type=parse_size, default=None, help="size of the disk test file [1GiB]")
    ap.add_argument("--loopback-bytes", type=parse_size, default=None, help="bytes pushed over loopback [1GiB]")
    ap.add_argument("--store", default=None, help="object store URL [file://<dir>/objects]")
    ap.add_argument("--dir", type=Path, default=REPO_ROOT / "target" / "bench", help="scratch dir (wiped) [target/bench]")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (data, broker log) afterwards")
    ap.add_argument("--broker-bin", type=Path, default=REPO_ROOT / "target" / "release" / "strata")
    ap.add_argument("--broker-arg", action="append", default=[], help="extra arg for `strata serve` (repeatable)")
    ap.add_argument("--broker-args", default="",
                    help='extra args for `strata serve` in one string, shell-split; write it with "=": --broker-args="--compaction-age-ms 30000"')
    ap.add_argument("--skip-machine", action="store_true", help="skip the disk/loopback measurements")
    ap.add_argument("--txn", action="store_true",
                    help="after the produce phase (and the tail read, which must find that phase's data in the "
                         "broker cache), produce the same volume with the same number of processes again, each a "
                         "transactional producer, to a fresh topic with the same partitions; then read it back "
                         "read_committed and check the record count (txn_* figures)")
    ap.add_argument("--txn-records", type=int, default=10000,
                    help="records per transaction in the --txn phase (the last one takes the rest) [10000]")
    ap.add_argument("--acls", type=int, default=0,
                    help="create this many ACLs first (one allows everything on the bench topic): "
                         "measures the authorizer on every request [0]")
    sk = ap.add_argument_group("soak", "--soak: a long fixed-rate run over many partitions instead of the phases "
                               "above; prints index/state/snapshot/RSS/store figures every --soak-report-seconds, "
                               "their growth, and a catch-up read at the end (uses --record-size, --consumers, "
                               "--disk-bytes, --store, --broker-arg(s))")
    sk.add_argument("--soak", action="store_true", help="run the soak instead of the benchmark phases")
    sk.add_argument("--soak-minutes", type=float, default=30.0, help="length of the produce phase [30]")
    sk.add_argument("--soak-partitions", type=int, default=1000, help="partitions of the soak topic [1000]")
    sk.add_argument("--soak-rate", type=float, default=1.0,
                    help="produce requests (one record each) per second per partition [1]")
    sk.add_argument("--soak-report-seconds", type=float, default=60.0, help="seconds between report blocks [60]")
    sk.add_argument("--soak-producers", type=int, default=2, help="producer processes, each owning a share of the partitions [2]")
    sk.add_argument("--soak-compact", action="store_true",
                    help=f"compacted soak topic ({SOAK_COMPACT_CONFIG}), {SOAK_KEYS} keys a partition; with "
                         f"--soak-txn every {SOAK_ABORT_EVERY}th transaction is aborted (markers and the aborted "
                         "index left to the cleaner)")
    sk.add_argument("--soak-txn", action="store_true",
                    help="transactional soak producers, each committing once a second (a marker per partition per second)")
    il = ap.add_argument_group("idle latency", "--idle-latency: only the produce latency at light load (one record "
                               "per request, linger.ms=0, acks=all), for a plain then an idempotent producer")
    il.add_argument("--idle-latency", action="store_true", help="run the idle-latency phase instead of the benchmark")
    il.add_argument("--idle-rate", type=float, default=300.0, help="records per second [300]")
    il.add_argument("--idle-seconds", type=float, default=10.0, help="measured seconds per producer [10]")
    il.add_argument("--idle-record-size", type=int, default=100, help="bytes per record [100]")
    a = ap.parse_args()
    if a.idle_latency:
        return run_idle_latency(a)
    if a.soak:
        return run_soak(a, mp.get_context("spawn"))

    volume = a.volume if a.volume is not None else (parse_size("256MiB") if a.quick else parse_size("2GiB"))
    lat_s = a.latency_seconds if a.latency_seconds is not None else (8.0 if a.quick else 20.0)
    warm_s = 2.0
    disk_bytes = a.disk_bytes if a.disk_bytes is not None else (parse_size("256MiB") if a.quick else parse_size("1GiB"))
    loop_bytes = a.loopback_bytes if a.loopback_bytes is not None else (parse_size("512MiB") if a.quick else parse_size("1GiB"))
    cargs = {"record_size": a.record_size, "linger_ms": a.linger_ms, "batch_size": a.batch_size,
             "fetch_max_bytes": 52428800, "partition_fetch_bytes": 4 << 20, "fetch_wait_ms": a.fetch_wait_ms,
             "txn_records": a.txn_records, "txn_init_timeout": 30.0, "txn_commit_timeout": 120.0}
    if a.txn_records < 1:
        ap.error("--txn-records must be at least 1")

    if a.dir.exists():
        shutil.rmtree(a.dir)
    a.dir.mkdir(parents=True)
    ctx = mp.get_context("spawn")
    t_bench = time.monotonic()

    note(f"strata bench: volume={volume} B, record={a.record_size} B, partitions={a.partitions}, "
         f"producers={a.producers}, consumers={a.consumers}, linger.ms={a.linger_ms}, batch.size={a.batch_size}, "
         f"rate={a.rate} MB/s for {lat_s:g}+{warm_s:g}(warm-up) s, dir={a.dir}"
         + (f", txn phase: {a.txn_records} records per transaction" if a.txn else ""))
    from confluent_kafka import version, libversion
    fig("client", f"confluent-kafka {version()[0]} librdkafka {libversion()[0]}")
    machine_info(a.dir)
    fig("machine_loadavg_start", " ".join(open("/proc/loadavg").read().split()[:3]))

    # ---- machine
    if a.skip_machine:
        disk_w = disk_r = disk_rc = loop = float("nan")
    else:
        disk_w, disk_r, disk_rc = disk_bandwidth(a.dir, disk_bytes)
        fig("disk_write_seq", disk_w, "MB/s")
        fig("disk_read_seq_cold", disk_r, "MB/s")
        fig("disk_read_seq_cached", disk_rc, "MB/s")
        loop = loopback_bandwidth(loop_bytes)
        fig("loopback_tcp", loop, "MB/s")

    broker = Broker(a.broker_bin, a.dir, a.store, a.broker_arg + shlex.split(a.broker_args))
    broker.start()
    fig("broker_store", broker.store)
    problems: list[str] = []
    try:
        create_topic(broker.bootstrap, a.partitions)
        if a.acls:
            create_acls(broker.bootstrap, a.acls, txn=a.txn)
            fig("acls", a.acls)

        # ---- produce throughput
        nrec = volume // a.record_size
        per = [nrec // a.producers + (1 if i < nrec % a.producers else 0) for i in range(a.producers)]
        objs0 = broker.segment_objects()
        sbytes0 = broker.store_bytes()
        q = ctx.Queue()
        barrier = ctx.Barrier(a.producers + 1)
        procs = [ctx.Process(daemon=True, target=_throughput_producer, args=(broker.bootstrap, TOPIC, n, cargs, barrier, q))
                 for n in per]
        for pr in procs:
            pr.start()
        barrier.wait(timeout=60)
        with Phase(broker) as ph:
            res = collect(q, procs, len(procs), 1800)
        for pr in procs:
            pr.join(30)
        secs = max(r["t1"] for r in res) - min(r["t0"] for r in res)
        prod_bytes = nrec * a.record_size
        prod_mbs = prod_bytes / secs / MB
        errs = sum(r["errors"] for r in res) + sum(r["undelivered"] for r in res)
        objs = broker.segment_objects() - objs0
        fig("produce_mode", _producer_mode(_producer_conf(broker.bootstrap, cargs)))
        fig("produce_volume", prod_bytes / MB, "MB")
        fig("produce_seconds", secs, "s")
        fig("produce_throughput", prod_mbs, "MB/s")
        fig("produce_records", nrec / secs, "records/s")
        fig("produce_vs_disk_write", prod_mbs / disk_w, "ratio")
        fig("produce_errors", errs)
        if errs:
            problems.append(f"produce: {errs} errors, last: {[r['last_error'] for r in res if r['last_error']]}")
        fig("produce_client_cpu", sum(r["cpu"] for r in res) / secs, "cores")
        fig("produce_broker_cpu", ph.cpu / secs, "cores")
        fig("broker_cpu_per_gb", ph.cpu / (prod_bytes / GB), "cpu-s/GB")
        if objs >= 0:
            fig("store_puts_per_gb", objs / (prod_bytes / GB), "PUT/GB")
            fig("store_object_mean_size", (broker.store_bytes() - sbytes0) / max(objs, 1) / MB, "MB")
        else:
            fig("store_puts_per_gb", "n/a")
        fig("broker_rss_after_produce", broker.rss_mib(), "MiB")

        # ---- tail reader: the newest --tail-window bytes, still in the broker cache
        wm = watermarks(broker.bootstrap, a.partitions)
        ends = {p: wm[p][1] for p in wm}
        per_part = max(1, a.tail_window // a.record_size // a.partitions)
        starts = {p: max(wm[p][0], ends[p] - per_part) for p in wm}
        if broker.store_dir:
            drop_tree_cache(broker.store_dir)  # so a store read would show up as a disk read
        with Phase(broker) as ph:
            r = run_drain(ctx, broker.bootstrap, starts, ends, a.consumers, cargs)
        tail_mbs = r["bytes"] / r["secs"] / MB
        fig("tail_consume_volume", r["total_bytes"] / MB, "MB")
        fig("tail_consume_first_record", r["first_record_s"] * 1000, "ms")
        fig("tail_consume_throughput", tail_mbs, "MB/s")
        fig("tail_consume_vs_produce", tail_mbs / prod_mbs, "ratio")
        fig("tail_consume_vs_loopback", tail_mbs / loop, "ratio")
        fig("tail_consume_broker_disk_read", ph.disk_read / MB if ph.disk_read >= 0 else "n/a", "MB")
        fig("tail_consume_broker_cpu", ph.cpu / r["secs"], "cores")
        fig("tail_consume_client_cpu", r["client_cpu"] / r["secs"], "cores")
        if r["errors"] or r["unfinished"]:
            problems.append(f"tail consume: {r['errors']} errors, {r['unfinished']} partitions not finished")

        # ---- latency at a fixed rate: produce latency and end-to-end
        rate_rps = a.rate * MB / a.record_size
        q = ctx.Queue()
        ready = ctx.Event()
        stop = ctx.Event()
        cons = ctx.Process(daemon=True, target=_e2e_consumer, args=(broker.bootstrap, TOPIC, a.partitions, cargs, ready, q, stop))
        cons.start()
        if not ready.wait(40):
            problems.append("e2e consumer did not get ready")
        prod_ready = ctx.Event()
        prod_ready.set()
        qp = ctx.Queue()
        prod = ctx.Process(daemon=True, target=_rate_producer,
                           args=(broker.bootstrap, TOPIC, rate_rps, warm_s, lat_s, cargs, prod_ready, qp))
        with Phase(broker) as ph:
            prod.start()
            pres = collect(qp, [prod], 1, lat_s + warm_s + 300)[0]
        prod.join(30)
        stop.set()
        cres = collect(q, [cons], 1, 120)[0]
        cons.join(30)
        plat = sorted(x / 1e6 for x in pres["lat"])
        elat = sorted(x / 1e6 for x in cres["lat"])
        fig("latency_rate_target", a.rate, "MB/s")
        fig("latency_rate_achieved", pres["achieved_rps"] * a.record_size / MB, "MB/s")
        fig("produce_latency_p50", pct(plat, 50), "ms")
        fig("produce_latency_p99", pct(plat, 99), "ms")
        fig("produce_latency_p999", pct(plat, 99.9), "ms")
        fig("produce_latency_max", plat[-1] if plat else float("nan"), "ms")
        fig("e2e_latency_p50", pct(elat, 50), "ms")
        fig("e2e_latency_p99", pct(elat, 99), "ms")
        fig("e2e_latency_max", elat[-1] if elat else float("nan"), "ms")
        fig("latency_samples", f"{len(plat)} produce, {len(elat)} e2e of {pres['measured']} sent")
        fig("latency_broker_cpu", ph.cpu / ph.wall, "cores")
        if pres["errors"]:
            problems.append(f"latency phase: {pres['errors']} produce errors")
        if len(elat) < pres["measured"]:
            problems.append(f"e2e consumer received {len(elat)} of {pres['measured']} measured records")

        # ---- catch-up reader: restart (cold broker cache), evict store files from the page cache
        rc = broker.stop()
        if rc not in (0, None):
            problems.append(f"broker exited with {rc} on SIGTERM")
        log1 = broker.log_since_start()
        broker.start()
        wm = watermarks(broker.bootstrap, a.partitions)
        starts = {p: wm[p][0] for p in wm}
        ends = {p: wm[p][1] for p in wm}
        evicted = drop_tree_cache(broker.store_dir) if broker.store_dir else 0
        with Phase(broker) as ph:
            r = run_drain(ctx, broker.bootstrap, starts, ends, a.consumers, cargs)
        cu_mbs = r["bytes"] / r["secs"] / MB
        fig("catchup_consume_volume", r["total_bytes"] / MB, "MB")
        fig("catchup_consume_first_record", r["first_record_s"] * 1000, "ms")
        fig("catchup_consume_throughput", cu_mbs, "MB/s")
        fig("catchup_consume_vs_disk_read", cu_mbs / disk_r, "ratio")
        fig("catchup_consume_vs_loopback", cu_mbs / loop, "ratio")
        fig("catchup_consume_broker_disk_read", ph.disk_read / MB if ph.disk_read >= 0 else "n/a", "MB")
        fig("catchup_consume_broker_cpu", ph.cpu / r["secs"], "cores")
        fig("catchup_consume_client_cpu", r["client_cpu"] / r["secs"], "cores")
        if broker.store_dir:
            note(f"catch-up: broker restarted, {evicted} store files evicted from the page cache first")
        if r["errors"] or r["unfinished"]:
            problems.append(f"catch-up consume: {r['errors']} errors, {r['unfinished']} partitions not finished")

        # ---- idempotent and transactional produce (--txn): same volume and processes,
        # fresh topics. Last, so that the compaction of what they write disturbs no other
        # phase's figures.
        if a.txn:
            run_txn_phase(ctx, broker, a, cargs, per, prod_mbs, problems)
    finally:
        rc = broker.stop()
    log2 = broker.log_since_start()
    if rc not in (0, None):
        problems.append(f"broker exited with {rc} on SIGTERM")

    # ---- object-store request counters, if the broker logs them at shutdown
    counts = [re.search(r"object_store_requests\s+puts=(\d+)\s+gets=(\d+)", t) for t in (log1, log2)]
    if all(counts):
        puts = sum(int(m.group(1)) for m in counts)
        gets = sum(int(m.group(2)) for m in counts)
        fig("store_requests_puts", puts)
        fig("store_requests_gets", gets)
        fig("store_gets_per_gb_consumed", "see counts above")
    else:
        fig("store_gets_per_gb", "n/a", "(broker does not report object-store GETs)")

    full = broker.log_path.read_text(errors="replace")
    bad = [l for l in full.splitlines() if re.search(r"\b(WARN|ERROR)\b|panicked", l)]
    fig("broker_log_warn_error_lines", len(bad))
    for l in bad[:15]:
        note(f"broker log: {l[:300]}")
    for p in problems:
        note(f"PROBLEM: {p}")
    fig("machine_loadavg_end", " ".join(open("/proc/loadavg").read().split()[:3]))
    fig("bench_wall", time.monotonic() - t_bench, "s")
    if not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)
    else:
        note(f"kept {a.dir} (broker log: {broker.log_path})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
