"""What this machine can do, measured on the filesystem of --dir in the same run, so
throughputs can be read as fractions of it: CPU, memory, disk and kernel, sequential
disk bandwidth (write + fsync, cold read, cached re-read), one TCP stream over loopback."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

from harness import free_port

from bench.report import MB, fig


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


def disk_figures(bench_dir: Path, nbytes: int) -> tuple[float, float, float]:
    """disk_bandwidth(), printed as the disk_* figures."""
    disk_w, disk_r, disk_rc = disk_bandwidth(bench_dir, nbytes)
    fig("disk_write_seq", disk_w, "MB/s")
    fig("disk_read_seq_cold", disk_r, "MB/s")
    fig("disk_read_seq_cached", disk_rc, "MB/s")
    return disk_w, disk_r, disk_rc


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
