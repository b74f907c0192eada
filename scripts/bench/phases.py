"""The benchmark's phases, in the order they run: produce throughput, tail read, latency
at a fixed rate, catch-up read after a restart (the --txn phases are in bench.txn), and
what they share: `Phase` (broker CPU and disk reads around a phase), `collect` (worker
results), `run_drain` (a read by consumer processes) and `timed_drain` (a read by the
load generator of --loadgen, inside a `Phase`).

With --loadgen rust (the default when tools/loadgen is built) the produce, tail and
catch-up phases are driven by strata-loadgen (bench.loadgen); the latency phase always
by the Python processes, whose figures it has always had."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import Broker

from bench import loadgen
from bench.broker import stop_broker
from bench.machine import drop_tree_cache
from bench.report import GB, MB, fig, note, pct, read_stats
from bench.topics import TOPIC, watermarks
from bench.workers import drain_consumer, e2e_consumer, producer_conf, producer_mode, rate_producer, throughput_producer


@dataclass
class Bench:
    """One benchmark run: its broker, options, client settings and machine figures
    (nan with --skip-machine); phases append what went wrong to `problems`."""
    ctx: object  # a multiprocessing context (spawn)
    broker: Broker
    a: object  # the parsed command line
    cargs: dict  # client settings, passed to the workers
    disk_write: float
    disk_read: float
    loopback: float
    loadgen_bin: Path | None = None  # strata-loadgen (--loadgen rust), or None: the Python processes
    problems: list[str] = field(default_factory=list)


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


def collect(q, procs, n: int, timeout: float) -> list:
    """n results from q; fail fast (instead of hanging) if a worker dies first."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        try:
            out.append(q.get(timeout=1.0))
            continue
        except queue.Empty:
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
        pr = ctx.Process(daemon=True, target=drain_consumer, args=(bootstrap, topic, {p: starts[p] for p in g},
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


def timed_drain(ctx, broker: Broker, loadgen_bin: Path | None, log_dir: Path, starts: dict, ends: dict, nconsumers: int,
                args: dict, topic: str = TOPIC, isolation=None, name: str = "drain") -> tuple[dict, Phase]:
    """A read of starts[p]..ends[p] (run_drain's result) and the `Phase` around it: by
    strata-loadgen when loadgen_bin is set (the phase sampled from its go to its result,
    its connection set up before), else by consumer processes (the phase around them)."""
    if loadgen_bin is not None:
        job = loadgen.drain_job(loadgen_bin, log_dir, broker.bootstrap, topic, starts, ends, nconsumers, args,
                                isolation, name).start()
        with Phase(broker) as ph:
            job.go()
            res = job.result(900)
        return loadgen.drain_result(res), ph
    with Phase(broker) as ph:
        r = run_drain(ctx, broker.bootstrap, starts, ends, nconsumers, args, topic, isolation)
    return r, ph


def per_gb(cpu: float, nbytes: float):
    """Broker cpu-s per GB of `nbytes` ("n/a" for none)."""
    return cpu / (nbytes / GB) if nbytes > 0 else "n/a"


# ----------------------------------------------------------------- produce
def produce_phase(b: Bench, per: list[int]) -> float:
    """Producers (per[i] records each: processes, or strata-loadgen's instances) as fast
    as they go; returns MB/s."""
    a, broker = b.a, b.broker
    nrec = sum(per)
    objs0 = broker.segment_objects()
    sbytes0 = broker.store_bytes()
    if b.loadgen_bin is not None:
        res, ph = _produce_loadgen(b, nrec)
        secs = res["seconds"]
        errs = res["errors"] + res["undelivered"]
        last_errors = [res["last_error"]] if res["last_error"] else []
        client_cpu = res["cpu_s"]
    else:
        res, ph = _produce_python(b, per)
        secs = max(r["t1"] for r in res) - min(r["t0"] for r in res)
        errs = sum(r["errors"] for r in res) + sum(r["undelivered"] for r in res)
        last_errors = [r["last_error"] for r in res if r["last_error"]]
        client_cpu = sum(r["cpu"] for r in res)
    prod_bytes = nrec * a.record_size
    prod_mbs = prod_bytes / secs / MB
    objs = broker.segment_objects() - objs0
    fig("produce_mode", producer_mode(producer_conf(broker.bootstrap, b.cargs)))
    fig("produce_volume", prod_bytes / MB, "MB")
    fig("produce_seconds", secs, "s")
    fig("produce_throughput", prod_mbs, "MB/s")
    fig("produce_records", nrec / secs, "records/s")
    fig("produce_vs_disk_write", prod_mbs / b.disk_write, "ratio")
    fig("produce_errors", errs)
    if errs:
        b.problems.append(f"produce: {errs} errors, last: {last_errors}")
    fig("produce_client_cpu", client_cpu / secs, "cores")
    fig("produce_broker_cpu", ph.cpu / secs, "cores")
    fig("broker_cpu_per_gb", ph.cpu / (prod_bytes / GB), "cpu-s/GB")
    fig("produce_broker_cpu_per_gb", ph.cpu / (prod_bytes / GB), "cpu-s/GB")
    if b.loadgen_bin is not None:
        # Delivery-report latency of the flat-out producers: mostly time queued in the client.
        lat = res["latency_ms"]
        fig("produce_flat_out_latency_p50", lat["p50"], "ms")
        fig("produce_flat_out_latency_p99", lat["p99"], "ms")
    if objs >= 0:
        fig("store_puts_per_gb", objs / (prod_bytes / GB), "PUT/GB")
        fig("store_object_mean_size", (broker.store_bytes() - sbytes0) / max(objs, 1) / MB, "MB")
    else:
        fig("store_puts_per_gb", "n/a")
    fig("broker_rss_after_produce", broker.rss_mib(), "MiB")
    heap_figures("after_produce", broker)
    return prod_mbs


def heap_figures(when: str, broker: Broker) -> None:
    """jemalloc's live heap and what it holds, from the broker's stats.json (5 s old at
    most): RSS minus these is code, stacks and memory outside the allocator."""
    st = read_stats(broker.data_dir / "stats.json")
    if st is not None and "heap_allocated_bytes" in st:
        fig(f"broker_heap_allocated_{when}", st["heap_allocated_bytes"] / 2**20, "MiB")
        fig(f"broker_heap_resident_{when}", st["heap_resident_bytes"] / 2**20, "MiB")


def _produce_python(b: Bench, per: list[int]) -> tuple[list[dict], Phase]:
    """Producer processes, per[i] records each, started together from a barrier."""
    a, broker, ctx = b.a, b.broker, b.ctx
    q = ctx.Queue()
    barrier = ctx.Barrier(a.producers + 1)
    procs = [ctx.Process(daemon=True, target=throughput_producer, args=(broker.bootstrap, TOPIC, n, b.cargs, barrier, q))
             for n in per]
    for pr in procs:
        pr.start()
    barrier.wait(timeout=60)
    with Phase(broker) as ph:
        res = collect(q, procs, len(procs), 1800)
    for pr in procs:
        pr.join(30)
    return res, ph


def _produce_loadgen(b: Bench, nrec: int) -> tuple[dict, Phase]:
    """strata-loadgen with --producers instances, nrec records between them."""
    job = loadgen.produce_job(b.loadgen_bin, b.a.dir, b.broker.bootstrap, TOPIC, nrec, b.a.producers, b.cargs).start()
    with Phase(b.broker) as ph:
        job.go()
        res = job.result(1800)
    if res["exit_code"]:
        b.problems.append(f"strata-loadgen produce exited with {res['exit_code']}: {res['stderr']}")
    return res, ph


# ----------------------------------------------------------------- tail read
def tail_phase(b: Bench, prod_mbs: float) -> None:
    """The newest --tail-window bytes, still in the broker cache."""
    a, broker = b.a, b.broker
    wm = watermarks(broker.bootstrap, a.partitions)
    ends = {p: wm[p][1] for p in wm}
    per_part = max(1, a.tail_window // a.record_size // a.partitions)
    starts = {p: max(wm[p][0], ends[p] - per_part) for p in wm}
    if broker.store_dir:
        drop_tree_cache(broker.store_dir)  # so a store read would show up as a disk read
    r, ph = timed_drain(b.ctx, broker, b.loadgen_bin, a.dir, starts, ends, a.consumers, b.cargs, name="tail")
    tail_mbs = r["bytes"] / r["secs"] / MB
    fig("tail_consume_volume", r["total_bytes"] / MB, "MB")
    fig("tail_consume_first_record", r["first_record_s"] * 1000, "ms")
    fig("tail_consume_throughput", tail_mbs, "MB/s")
    fig("tail_consume_vs_produce", tail_mbs / prod_mbs, "ratio")
    fig("tail_consume_vs_loopback", tail_mbs / b.loopback, "ratio")
    fig("tail_consume_vs_disk_read", tail_mbs / b.disk_read, "ratio")
    fig("tail_consume_broker_disk_read", ph.disk_read / MB if ph.disk_read >= 0 else "n/a", "MB")
    fig("tail_consume_broker_cpu", ph.cpu / r["secs"], "cores")
    fig("tail_consume_broker_cpu_per_gb", per_gb(ph.cpu, r["total_bytes"]), "cpu-s/GB")
    fig("tail_consume_client_cpu", r["client_cpu"] / r["secs"], "cores")
    if r["errors"] or r["unfinished"]:
        b.problems.append(f"tail consume: {r['errors']} errors, {r['unfinished']} partitions not finished")


# ----------------------------------------------------------------- latency
def latency_phase(b: Bench, lat_s: float, warm_s: float) -> None:
    """Produce latency and end-to-end latency at a fixed rate (--rate MB/s)."""
    a, broker, ctx = b.a, b.broker, b.ctx
    rate_rps = a.rate * MB / a.record_size
    q = ctx.Queue()
    ready = ctx.Event()
    stop = ctx.Event()
    cons = ctx.Process(daemon=True, target=e2e_consumer, args=(broker.bootstrap, TOPIC, a.partitions, b.cargs, ready, q, stop))
    cons.start()
    if not ready.wait(40):
        b.problems.append("e2e consumer did not get ready")
    prod_ready = ctx.Event()
    prod_ready.set()
    qp = ctx.Queue()
    prod = ctx.Process(daemon=True, target=rate_producer,
                       args=(broker.bootstrap, TOPIC, rate_rps, warm_s, lat_s, b.cargs, prod_ready, qp))
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
        b.problems.append(f"latency phase: {pres['errors']} produce errors")
    if len(elat) < pres["measured"]:
        b.problems.append(f"e2e consumer received {len(elat)} of {pres['measured']} measured records")


# ----------------------------------------------------------------- catch-up read
def catchup_phase(b: Bench) -> str:
    """Restarts the broker (cold broker cache), evicts the store files from the page
    cache, then reads the whole topic. Returns the log of the broker before the restart."""
    a, broker = b.a, b.broker
    # Memory at rest after the produce, tail and latency phases (issue 23's target: the
    # caches plus 128 MiB): a few seconds for freed pages to go back to the OS.
    time.sleep(6)
    fig("broker_rss_at_rest", broker.rss_mib(), "MiB")
    # The high-water mark of the produce, tail and latency phases, while the produce
    # phase's data was compacted.
    fig("broker_rss_peak", broker.rss_mib("VmHWM"), "MiB")
    heap_figures("at_rest", broker)
    rc = stop_broker(broker)
    if rc not in (0, None):
        b.problems.append(f"broker exited with {rc} on SIGTERM")
    log1 = broker.log_since_start()
    broker.start()
    wm = watermarks(broker.bootstrap, a.partitions)
    starts = {p: wm[p][0] for p in wm}
    ends = {p: wm[p][1] for p in wm}
    evicted = drop_tree_cache(broker.store_dir) if broker.store_dir else 0
    r, ph = timed_drain(b.ctx, broker, b.loadgen_bin, a.dir, starts, ends, a.consumers, b.cargs, name="catchup")
    cu_mbs = r["bytes"] / r["secs"] / MB
    fig("catchup_consume_volume", r["total_bytes"] / MB, "MB")
    fig("catchup_consume_first_record", r["first_record_s"] * 1000, "ms")
    fig("catchup_consume_throughput", cu_mbs, "MB/s")
    fig("catchup_consume_vs_disk_read", cu_mbs / b.disk_read, "ratio")
    fig("catchup_consume_vs_loopback", cu_mbs / b.loopback, "ratio")
    fig("catchup_consume_broker_disk_read", ph.disk_read / MB if ph.disk_read >= 0 else "n/a", "MB")
    fig("catchup_consume_broker_cpu", ph.cpu / r["secs"], "cores")
    fig("catchup_consume_broker_cpu_per_gb", per_gb(ph.cpu, r["total_bytes"]), "cpu-s/GB")
    fig("catchup_consume_client_cpu", r["client_cpu"] / r["secs"], "cores")
    fig("broker_rss_after_catchup", broker.rss_mib(), "MiB")
    if broker.store_dir:
        note(f"catch-up: broker restarted, {evicted} store files evicted from the page cache first")
    if r["errors"] or r["unfinished"]:
        b.problems.append(f"catch-up consume: {r['errors']} errors, {r['unfinished']} partitions not finished")
    return log1
