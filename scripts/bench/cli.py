"""Strata benchmark (issue 5): starts its own broker, drives it with librdkafka
(confluent-kafka), and prints one `name: value unit` line per figure so runs can
be diffed.  Run it through scripts/bench.sh, which prepares the venv and binary.

Units: MB = 10^6 bytes, GB = 10^9 bytes, MiB/GiB only in option values.
Machine figures are measured in the same run, on the filesystem of --dir, so
throughputs can be read as fractions of what this machine can do.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import sys
import time
from pathlib import Path

from harness import REPO_ROOT

from bench.broker import bench_broker, stop_broker
from bench import loadgen
from bench.idle import run_idle_latency
from bench.machine import disk_figures, loadavg, loopback_bandwidth, machine_info
from bench.phases import Bench, catchup_phase, latency_phase, produce_phase, tail_phase
from bench.report import clean_up, fig, fresh_dir, log_figures, note, parse_size, problem_notes
from bench.soak import run_soak
from bench.trickle import run_trickle
from bench.topics import SOAK_ABORT_EVERY, SOAK_COMPACT_CONFIG, SOAK_KEYS, create_acls, create_topic
from bench.txn import run_txn_phase


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--loadgen", choices=("rust", "python"), default=None,
                    help="what drives the produce, tail and catch-up phases (and the soak's catch-up): rust = "
                         "strata-loadgen (tools/loadgen, rdkafka), python = confluent-kafka processes; the latency "
                         "phase is always Python [rust if --loadgen-bin exists, else python]")
    ap.add_argument("--loadgen-bin", type=Path, default=loadgen.DEFAULT_BIN,
                    help="the strata-loadgen binary [tools/loadgen/target/release/strata-loadgen]")
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
    tr = ap.add_argument_group("s3 trickle", "--s3-trickle: many partitions, one record per partition per second, "
                               "on moto's S3 server behind a proxy that adds S3-like latency and counts requests; "
                               "plain then idempotent producers (uses --record-size, --broker-arg(s))")
    tr.add_argument("--s3-trickle", action="store_true", help="run the S3 trickle instead of the benchmark")
    tr.add_argument("--trickle-partitions", type=int, default=300, help="partitions [300]")
    tr.add_argument("--trickle-rate", type=float, default=1.0, help="records (requests) per partition per second [1]")
    tr.add_argument("--trickle-producers", type=int, default=2, help="producer processes [2]")
    tr.add_argument("--trickle-seconds", type=float, default=60.0, help="measured seconds per mode [60]")
    tr.add_argument("--trickle-warmup", type=float, default=15.0, help="warm-up seconds per mode [15]")
    tr.add_argument("--trickle-modes", default="plain,idempotent,idempotent16",
                    help="modes, in order: plain, idempotent, idempotentN (idempotent, broker --leader-ids N) "
                         "[plain,idempotent,idempotent16]")
    tr.add_argument("--put-delay-ms", type=float, default=30.0, help="latency the proxy adds to each PUT [30]")
    tr.add_argument("--get-delay-ms", type=float, default=15.0, help="latency the proxy adds to each GET [15]")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.idle_latency:
        return run_idle_latency(a)
    loadgen.resolve(ap, a)
    if a.soak:
        return run_soak(a, mp.get_context("spawn"))
    if a.s3_trickle:
        fresh_dir(a.dir)
        return run_trickle(a, mp.get_context("spawn"))
    if a.txn_records < 1:
        ap.error("--txn-records must be at least 1")
    return run_benchmark(a)


def run_benchmark(a) -> int:
    """The benchmark phases: machine figures, produce, tail read, latency, catch-up read
    (and --txn), then the broker's object-store counters and log."""
    volume = a.volume if a.volume is not None else (parse_size("256MiB") if a.quick else parse_size("2GiB"))
    lat_s = a.latency_seconds if a.latency_seconds is not None else (8.0 if a.quick else 20.0)
    warm_s = 2.0
    disk_bytes = a.disk_bytes if a.disk_bytes is not None else (parse_size("256MiB") if a.quick else parse_size("1GiB"))
    loop_bytes = a.loopback_bytes if a.loopback_bytes is not None else (parse_size("512MiB") if a.quick else parse_size("1GiB"))
    cargs = {"record_size": a.record_size, "linger_ms": a.linger_ms, "batch_size": a.batch_size,
             "fetch_max_bytes": 52428800, "partition_fetch_bytes": 4 << 20, "fetch_wait_ms": a.fetch_wait_ms,
             "txn_records": a.txn_records, "txn_init_timeout": 30.0, "txn_commit_timeout": 120.0}

    fresh_dir(a.dir)
    ctx = mp.get_context("spawn")
    t_bench = time.monotonic()

    note(f"strata bench: volume={volume} B, record={a.record_size} B, partitions={a.partitions}, "
         f"producers={a.producers}, consumers={a.consumers}, linger.ms={a.linger_ms}, batch.size={a.batch_size}, "
         f"rate={a.rate} MB/s for {lat_s:g}+{warm_s:g}(warm-up) s, dir={a.dir}"
         + (f", txn phase: {a.txn_records} records per transaction" if a.txn else ""))
    from confluent_kafka import libversion, version
    fig("client", f"confluent-kafka {version()[0]} librdkafka {libversion()[0]}")
    loadgen.figure(a)
    machine_info(a.dir)
    fig("machine_loadavg_start", loadavg())

    if a.skip_machine:
        disk_w = disk_r = loop = float("nan")
    else:
        disk_w, disk_r, _ = disk_figures(a.dir, disk_bytes)
        loop = loopback_bandwidth(loop_bytes)
        fig("loopback_tcp", loop, "MB/s")

    broker = bench_broker(a)
    broker.start()
    fig("broker_store", broker.store_url)
    b = Bench(ctx, broker, a, cargs, disk_w, disk_r, loop, loadgen_bin=a.loadgen_path)
    log1 = ""
    try:
        create_topic(broker.bootstrap, a.partitions)
        if a.acls:
            create_acls(broker.bootstrap, a.acls, txn=a.txn)
            fig("acls", a.acls)
        nrec = volume // a.record_size
        per = [nrec // a.producers + (1 if i < nrec % a.producers else 0) for i in range(a.producers)]
        prod_mbs = produce_phase(b, per)
        tail_phase(b, prod_mbs)
        latency_phase(b, lat_s, warm_s)
        log1 = catchup_phase(b)
        # Idempotent and transactional produce (--txn): same volume and processes, fresh
        # topics. Last, so that the compaction of what they write disturbs no other
        # phase's figures.
        if a.txn:
            run_txn_phase(b, per, prod_mbs)
    finally:
        rc = stop_broker(broker)
    log2 = broker.log_since_start()
    if rc not in (0, None):
        b.problems.append(f"broker exited with {rc} on SIGTERM")
    store_request_figures(log1, log2)
    log_figures(broker)
    problem_notes(b.problems)
    fig("machine_loadavg_end", loadavg())
    fig("bench_wall", time.monotonic() - t_bench, "s")
    clean_up(a, broker)
    return 1 if b.problems else 0


def store_request_figures(log1: str, log2: str) -> None:
    """Object-store request counters, if the broker logs them at shutdown (log1 and log2:
    the logs of the broker before and after the catch-up phase's restart)."""
    counts = [re.search(r"object_store_requests\s+puts=(\d+)\s+gets=(\d+)", t) for t in (log1, log2)]
    if all(counts):
        puts = sum(int(m.group(1)) for m in counts)
        gets = sum(int(m.group(2)) for m in counts)
        fig("store_requests_puts", puts)
        fig("store_requests_gets", gets)
        fig("store_gets_per_gb_consumed", "see counts above")
    else:
        fig("store_gets_per_gb", "n/a", "(broker does not report object-store GETs)")


if __name__ == "__main__":
    sys.exit(main())
