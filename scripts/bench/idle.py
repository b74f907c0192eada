"""--idle-latency: produce latency at light load (one record per request, linger.ms=0,
acks=all), for a plain then an idempotent producer, instead of the benchmark phases."""

from __future__ import annotations

import time

from bench.broker import bench_broker, stop_broker
from bench.report import clean_up, fig, fresh_dir, note, pct, problem_notes
from bench.topics import TOPIC, create_topic
from bench.workers import idle_producer


def run_idle_latency(a) -> int:
    fresh_dir(a.dir)
    broker = bench_broker(a)
    broker.start()
    note(f"idle latency: {a.idle_rate:g} records/s of {a.idle_record_size} B for {a.idle_seconds:g} s "
         f"(+2 s warm-up), linger.ms=0, acks=all, one partition; broker {a.broker_bin} {' '.join(broker.extra_args)}")
    problems = []
    try:
        create_topic(broker.bootstrap, 1)
        for name, idem in (("idle_produce_latency", False), ("idle_idempotent_produce_latency", True)):
            objs0 = broker.segment_objects()
            t0 = time.monotonic()
            r = idle_producer(broker.bootstrap, TOPIC, a.idle_rate, 2.0, a.idle_seconds, idem, a.idle_record_size)
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
        stop_broker(broker)
    problem_notes(problems)
    if not a.keep:
        clean_up(a, broker)
    return 1 if problems else 0
