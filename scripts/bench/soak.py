"""--soak: a long run at a fixed, modest rate over many partitions (e.g. 1000 partitions x 1
produce request/s each, 1 KiB records) to watch what must not grow without bound: index
entries, metadata state and snapshot, broker RSS, objects in the store.  A report block
every --soak-report-seconds, their growth at the end, then a catch-up read."""

from __future__ import annotations

import os
import statistics
import time

from bench.broker import bench_broker, extra_args, stop_broker
from bench.machine import disk_figures, drop_tree_cache, machine_info
from bench import loadgen
from bench.phases import collect, per_gb, timed_drain
from bench.report import (GB, MB, clean_up, fig, fresh_dir, log_figures, note, parse_size, problem_notes,
                          raft_snapshot_bytes, read_stats, store_walk)
from bench.topics import SOAK_COMPACT_CONFIG, SOAK_KEYS, TOPIC, create_topic, watermarks
from bench.workers import soak_producer

SOAK_GROWTH_TARGET_PCT = 10.0


def _fmt_growth(a, b):
    if a is None or b is None or not a:
        return "n/a"
    return (b - a) / a * 100.0


def run_soak(a, ctx) -> int:
    minutes, nparts, rate = a.soak_minutes, a.soak_partitions, a.soak_rate
    nprod = max(1, min(a.soak_producers, nparts))
    disk_bytes = a.disk_bytes if a.disk_bytes is not None else (
        parse_size("256MiB") if minutes < 10 else parse_size("1GiB"))
    extra = extra_args(a)

    fresh_dir(a.dir)
    t_bench = time.monotonic()
    note(f"strata soak: {minutes:g} min, {nparts} partitions x {rate:g} produce requests/s of one "
         f"{a.record_size} B record, {nprod} producer processes ({'transactional, a commit a second' if a.soak_txn else 'idempotent'}, acks=all, linger.ms=0), "
         f"{'compacted topic, ' if a.soak_compact else ''}"
         f"report every {a.soak_report_seconds:g} s, broker args {extra or 'none'}, dir={a.dir}")
    from confluent_kafka import libversion, version
    fig("client", f"confluent-kafka {version()[0]} librdkafka {libversion()[0]}")
    loadgen.figure(a)
    machine_info(a.dir)
    disk_r = float("nan") if a.skip_machine else disk_figures(a.dir, disk_bytes)[1]

    soak = Soak(a, ctx, nprod)
    soak.broker.start()
    fig("broker_store", soak.broker.store_url)
    try:
        soak.run(disk_r)
    finally:
        soak.stop.set()
        for pr in soak.procs:
            if pr.is_alive():
                pr.join(5)
            if pr.is_alive():
                pr.kill()
        rc = stop_broker(soak.broker)
    if rc not in (0, None):
        soak.problems.append(f"broker exited with {rc} on SIGTERM")
    log_figures(soak.broker)
    problem_notes(soak.problems)
    fig("bench_wall", time.monotonic() - t_bench, "s")
    clean_up(a, soak.broker)
    return 1 if soak.problems else 0


class Soak:
    """The soak's broker, producer processes (each owning a share of the partitions and
    counting in shared memory: sent, acked, errors, acked bytes, most records behind
    schedule) and samples."""

    def __init__(self, a, ctx, nprod: int):
        self.a, self.ctx = a, ctx
        self.nparts, self.rate, self.nprod = a.soak_partitions, a.soak_rate, nprod
        self.cargs = {"record_size": a.record_size, "fetch_max_bytes": 52428800, "partition_fetch_bytes": 4 << 20}
        self.broker = bench_broker(a)
        self.stats_path = self.broker.data_dir / "stats.json"
        self.problems: list[str] = []
        self.samples: list[dict] = []
        self.procs = []
        self.counters = []
        self.stop = ctx.Event()
        self.q = None

    def run(self, disk_r: float) -> None:
        create_topic(self.broker.bootstrap, self.nparts, config=SOAK_COMPACT_CONFIG if self.a.soak_compact else None)
        self.start_producers()
        t0 = time.monotonic()
        fig("soak_target_rate", self.rate * self.nparts, "requests/s")
        fig("soak_producer_mode", "transactional, a commit a second" if self.a.soak_txn else "idempotent")
        self.sample_loop(t0)
        self.stop.set()
        tot = self.producer_figures()
        self.growth_figures()
        self.catchup(tot, disk_r)

    def start_producers(self) -> None:
        a, ctx = self.a, self.ctx
        groups = [list(range(self.nparts))[i::self.nprod] for i in range(self.nprod)]
        self.counters = [ctx.Array("q", 5, lock=False) for _ in groups]
        self.q = ctx.Queue()
        start = ctx.Event()
        readies = []
        for g, cnt in zip(groups, self.counters):
            ready = ctx.Event()
            readies.append(ready)
            pr = ctx.Process(daemon=True, target=soak_producer,
                             args=(self.broker.bootstrap, TOPIC, g, self.rate, a.record_size, cnt, ready, start,
                                   self.stop, self.q,
                                   f"soak-{os.getpid()}-{len(self.procs)}" if a.soak_txn else None, a.soak_compact))
            pr.start()
            self.procs.append(pr)
        for r in readies:
            if not r.wait(60):
                raise RuntimeError("a soak producer did not get ready within 60 s")
        start.set()

    def totals(self) -> dict:
        return {k: sum(c[i] for c in self.counters)
                for i, k in enumerate(("sent", "acked", "errors", "acked_bytes"))} | {
            "behind_max": max(c[4] for c in self.counters)}

    # ------------------------------------------------------------- samples
    def sample_loop(self, t0: float) -> None:
        """A report block every --soak-report-seconds until --soak-minutes are over."""
        every = self.a.soak_report_seconds
        prev = {"t": t0, "acked": 0, "cbw": 0, "cputs": 0, "puts": 0}  # the broker's counters start at 0 with it
        deadline = t0 + self.a.soak_minutes * 60
        k = 0
        while True:
            k += 1
            self.wait_until(min(t0 + k * every, deadline))
            now = time.monotonic()
            el = now - t0
            tot = self.totals()
            st = read_stats(self.stats_path)
            walk = store_walk(self.broker.store_dir)
            s = {"elapsed": el, "minute": el / 60, **tot, "rss_mib": self.broker.rss_mib(),
                 "raft_snapshot_bytes": raft_snapshot_bytes(self.broker.data_dir), "stats": st, "walk": walk}
            label = f"m{round(el / 60)}" if every % 60 == 0 else f"s{round(el)}"
            self.report_sample(f"soak_{label}", s, tot, st, walk, now - prev["t"], prev)
            self.samples.append(s)
            prev.update(t=now, acked=tot["acked"])
            if now >= deadline - 0.5:
                break

    def wait_until(self, wake: float) -> None:
        """Sleeps until `wake`, failing fast if the broker or a producer dies."""
        broker = self.broker
        while time.monotonic() < wake:
            time.sleep(min(1.0, max(0.0, wake - time.monotonic())))
            if broker.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {broker.proc.returncode}; see {broker.log_path}")
            dead = [p for p in self.procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"soak producer exited with {dead[0].exitcode}")

    def report_sample(self, pre: str, s: dict, tot: dict, st: dict | None, walk: dict | None,
                      dt: float, prev: dict) -> None:
        """One report block: the `{pre}_*` figures (updates prev["cbw"], and s with the
        stats.json figures the growth is measured on)."""
        nparts = self.nparts
        fig(f"{pre}_minute", s["elapsed"] / 60, "min")
        fig(f"{pre}_records_produced", tot["sent"])
        fig(f"{pre}_records_acked", tot["acked"])
        fig(f"{pre}_produce_errors", tot["errors"])
        fig(f"{pre}_produce_rate", (tot["acked"] - prev["acked"]) / dt, "requests/s")
        fig(f"{pre}_produce_rate_per_partition", (tot["acked"] - prev["acked"]) / dt / nparts, "requests/s")
        fig(f"{pre}_producer_behind_max", tot["behind_max"], "records")
        if st is not None:
            self.stats_figures(pre, s, tot, st, dt, prev)
        else:
            fig(f"{pre}_stats", "n/a", f"({self.stats_path.name} missing: broker without stats)")
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

    def stats_figures(self, pre: str, s: dict, tot: dict, st: dict, dt: float, prev: dict) -> None:
        """The figures of one sample that come from the broker's stats.json."""
        parts_n = st.get("partitions") or self.nparts
        s["index_entries"] = st.get("index_entries")
        s["snapshot_bytes"] = st.get("snapshot_bytes")
        fig(f"{pre}_index_entries", st.get("index_entries", "n/a"))
        fig(f"{pre}_index_entries_per_partition_max", st.get("max_index_entries_per_partition", "n/a"))
        if isinstance(st.get("index_entries"), (int, float)):
            fig(f"{pre}_index_entries_per_partition_mean", st["index_entries"] / max(parts_n, 1))
        fig(f"{pre}_state_bytes", st.get("state_bytes", "n/a"), "B")
        fig(f"{pre}_snapshot_bytes", st.get("snapshot_bytes", "n/a"), "B")
        fig(f"{pre}_stats_objects", f"{st.get('objects', '?')} ({st.get('flush_objects', '?')} flush, "
            f"{st.get('segment_objects', '?')} segment, of which {st.get('shared_objects', 0)} shared "
            f"holding {st.get('shared_sections', 0)} sections, {st.get('garbage_objects', '?')} garbage)")
        # PUTs per second over the block: compaction's, and every purpose's.
        cputs = (st.get("store_requests") or {}).get("compaction", {}).get("put")
        puts = st.get("store_puts")
        for key, value, name in (("cputs", cputs, "compaction_put_rate"), ("puts", puts, "store_put_rate")):
            if isinstance(value, (int, float)) and prev.get(key) is not None:
                fig(f"{pre}_{name}", (value - prev[key]) / dt, "PUT/s")
            else:
                fig(f"{pre}_{name}", "n/a", "PUT/s")
            prev[key] = value if isinstance(value, (int, float)) else None
        s["compaction_puts"] = cputs
        s["store_puts"] = puts
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

    # ------------------------------------------------------------- the end
    def producer_figures(self) -> dict:
        """Collects the producers' results (stop is set); the soak_* produce figures."""
        res = collect(self.q, self.procs, len(self.procs), 180)
        for pr in self.procs:
            pr.join(30)
        tot = self.totals()
        secs = max(r["secs"] for r in res)
        fig("soak_records_sent", tot["sent"])
        fig("soak_records_acked", tot["acked"])
        fig("soak_produce_rate_achieved", tot["acked"] / secs, "requests/s")
        fig("soak_produce_rate_vs_target", tot["acked"] / secs / (self.rate * self.nparts), "ratio")
        fig("soak_produce_volume", tot["acked_bytes"] / MB, "MB")
        fig("soak_producer_client_cpu", sum(r["cpu"] for r in res) / secs, "cores")
        errs = tot["errors"] + sum(r["undelivered"] for r in res)
        fig("soak_produce_errors", errs)
        if errs:
            self.problems.append(f"soak produce: {errs} errors/undelivered, last: {[r['last_error'] for r in res if r['last_error']]}")
        return tot

    def growth_figures(self) -> None:
        """Growth between minute 10 (or the first sample of a short run) and the last sample."""
        samples = self.samples
        base = next((s for s in samples if s["minute"] >= 10 - 1e-6), None)
        if base is None or base is samples[-1]:
            base = samples[0]
            note(f"run shorter than 10 minutes: growth measured from the first sample "
                 f"(minute {base['minute']:.2f}) instead of minute 10")
        last = samples[-1]
        first = samples[0]
        for key, name in (("compaction_puts", "compaction_put_rate"), ("store_puts", "store_put_rate")):
            a, b = first.get(key), last.get(key)
            span = (last["elapsed"] - first["elapsed"]) or 1
            fig(f"soak_{name}_mean", (b - a) / span if isinstance(a, (int, float)) and isinstance(b, (int, float))
                else "n/a", "PUT/s")
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

    def catchup(self, tot: dict, disk_r: float) -> None:
        """A read of the whole topic from offset 0: restarted broker (cold cache), store
        files evicted from the page cache."""
        a, broker, nparts = self.a, self.broker, self.nparts
        rc = stop_broker(broker)
        if rc not in (0, None):
            self.problems.append(f"broker exited with {rc} on SIGTERM")
        broker.start()
        wm = watermarks(broker.bootstrap, nparts)
        starts = {p: wm[p][0] for p in wm}
        ends = {p: wm[p][1] for p in wm}
        total_log = sum(ends[p] - starts[p] for p in wm)
        if total_log < tot["acked"] and not a.soak_compact:
            self.problems.append(f"the topic holds {total_log} records, {tot['acked']} were acknowledged")
        if broker.store_dir:
            drop_tree_cache(broker.store_dir)
        # Transactional: read_committed, ending at each partition's end (its last offset is
        # a marker, never delivered), and every acknowledged record, not every offset.
        isolation = "read_committed" if a.soak_txn else None
        want = tot["acked"] if a.soak_txn else total_log
        if a.soak_compact:  # the cleaner keeps the latest committed record of each key
            want = nparts * SOAK_KEYS
        r, ph = timed_drain(self.ctx, broker, a.loadgen_path, a.dir, starts, ends, a.consumers, self.cargs, TOPIC,
                            isolation, name="soak-catchup")
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
        fig("soak_catchup_broker_cpu_per_gb", per_gb(ph.cpu, r["total_bytes"]), "cpu-s/GB")
        if r["errors"] or r["unfinished"] or r["records"] < want:
            self.problems.append(f"soak catch-up: {r['errors']} errors, {r['unfinished']} partitions not finished, "
                                 f"{r['records']} of {want} records read")
