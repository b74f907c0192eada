"""--txn: the idempotent and transactional produce phases, after the others (so that the
compaction of what they write disturbs no other phase's figures)."""

from __future__ import annotations

import os
import queue
import threading
import time

from bench.phases import Bench, Phase, collect, run_drain
from bench.report import MB, fig, pct
from bench.topics import IDEM_TOPIC, TXN_TOPIC, create_topic, watermarks
from bench.workers import producer_mode, txn_producer, txn_producer_conf


def run_txn_phase(b: Bench, per: list[int], base_mbs: float) -> None:
    """The same volume twice, each on a fresh topic: first idempotent producers
    (flushing every --txn-records records, the comparison), then one transactional
    producer per process (transactional.id unique per process and run), per[i] records
    each, committed every --txn-records; then a read_committed drain of the transactional
    topic that must return every committed record."""
    idem_mbs = run_txn_produce(b, per, "idempotent", IDEM_TOPIC)
    if idem_mbs is None:
        return
    fig("idempotent_produce_vs_produce", idem_mbs / base_mbs, "ratio")
    txn_mbs = run_txn_produce(b, per, "txn", TXN_TOPIC)
    if txn_mbs is None:
        return
    fig("txn_produce_vs_produce", txn_mbs / base_mbs, "ratio")
    fig("txn_produce_vs_idempotent", txn_mbs / idem_mbs, "ratio")


def run_txn_produce(b: Bench, per: list[int], kind: str, topic: str) -> float | None:
    """One --txn produce phase (`kind` "txn" or "idempotent"); its MB/s, None if it failed.
    The transactional one is drained read_committed after."""
    a, broker, cargs = b.a, b.broker, b.cargs
    create_topic(broker.bootstrap, a.partitions, topic)
    run_id = f"{os.getpid()}-{int(time.time())}"
    q = b.ctx.Queue()
    barrier = b.ctx.Barrier(len(per) + 1)
    procs = [b.ctx.Process(daemon=True, target=txn_producer,
                           args=(broker.bootstrap, topic, n, cargs,
                                 f"{'idempotent' if kind == 'idempotent' else 'bench-txn'}-{run_id}-{i}", barrier, q))
             for i, n in enumerate(per)]
    for pr in procs:
        pr.start()
    conf = txn_producer_conf(broker.bootstrap, cargs, "x")
    if kind == "idempotent":
        del conf["transactional.id"]
    fig(f"{kind}_produce_mode", f"{producer_mode(conf)}, "
                                f"{'flush' if kind == 'idempotent' else 'commit'} every {a.txn_records} records")
    try:
        barrier.wait(timeout=cargs["txn_init_timeout"] + 60)
    except threading.BrokenBarrierError:
        msg = _init_failure(procs, q)
        fig(f"{kind}_produce_throughput", "n/a", f"({kind} phase failed: {msg})")
        b.problems.append(f"{kind} phase failed: {msg}")
        return None
    with Phase(broker) as ph:
        res = collect(q, procs, len(procs), 1800)
    for pr in procs:
        pr.join(30)
    mbs, committed = _produce_figures(b, kind, res, ph, sum(per))
    if kind == "txn":
        _txn_drain(b, topic, committed)
    return mbs


def _init_failure(procs, q) -> str:
    """Why the producers never all got past init_transactions(): stops them and reads
    what they reported."""
    for pr in procs:
        pr.join(10)
        if pr.is_alive():
            pr.kill()
    errs = []
    while True:
        try:
            r = q.get(timeout=1.0)
        except queue.Empty:
            break
        if r.get("init_error") and r["init_error"] not in errs:
            errs.append(r["init_error"])
    msg = ("init_transactions() failed: " + "; ".join(errs)) if errs else \
        "the transactional producers were not ready in time"
    if any("TRANSACTIONAL_ID_AUTHORIZATION_FAILED" in e for e in errs):
        msg += " (does this broker support transactions?)"
    return msg


def _produce_figures(b: Bench, kind: str, res: list[dict], ph: Phase, wanted: int) -> tuple[float, int]:
    """The {kind}_produce_* and {kind}_commit_* figures; returns MB/s and records committed."""
    secs = max(r["t1"] for r in res) - min(r["t0"] for r in res)
    committed = sum(r["n"] for r in res)
    nbytes = committed * b.a.record_size
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
        b.problems.append(f"{kind} produce: {'; '.join(fails)} ({committed} of {wanted} records committed)")
    if errs:
        b.problems.append(f"{kind} produce: {errs} errors, last: {[r['last_error'] for r in res if r['last_error']]}")
    return mbs, committed


def _txn_drain(b: Bench, topic: str, committed: int) -> None:
    """A read_committed drain of the transactional topic: every committed record, once."""
    a, broker = b.a, b.broker
    wm = watermarks(broker.bootstrap, a.partitions, topic)
    starts = {p: wm[p][0] for p in wm}
    ends = {p: wm[p][1] for p in wm}
    with Phase(broker) as ph:
        r = run_drain(b.ctx, broker.bootstrap, starts, ends, a.consumers, b.cargs, topic, "read_committed")
    fig("txn_drain_MBps", r["bytes"] / r["secs"] / MB if r["bytes"] > 0 else float("nan"), "MB/s")
    fig("txn_drain_records", r["records"])
    fig("txn_drain_broker_cpu", ph.cpu / r["secs"], "cores")
    if r["records"] != committed:
        b.problems.append(f"txn drain (read_committed): read {r['records']} records, {committed} were committed")
    if r["errors"] or r["unfinished"]:
        b.problems.append(f"txn drain: {r['errors']} errors, {r['unfinished']} partitions not finished")
