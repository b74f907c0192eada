"""--s3-trickle: the request bill and the produce latency of a trickle on S3-like latency.

Many partitions, one small record per partition per second, each its own produce request
(linger.ms=0, acks=all), from a few producer processes: the load shape where a diskless
broker's PUTs cost the most per byte. The broker runs on moto's S3 server behind the
S3 proxy of tests/harness (`harness.s3proxy`), which adds S3 Standard's latency to
every PUT and counts every request the broker makes. It runs once with plain producers
with idempotent ones, and with idempotent ones and `--leader-ids 16` (`--trickle-modes`), each
on a fresh broker and bucket, and
prints per mode: PUTs and GETs per second and their monthly cost at S3 Standard list
prices, the PUTs by purpose (from the broker's stats file), and produce latency
percentiles.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from harness import Broker
from harness.s3 import close_s3_server, s3_server
from harness.s3proxy import S3Proxy

from bench.broker import BENCH_ENV, extra_args
from bench.report import fig, note, pct
from bench.topics import create_topic

TOPIC = "trickle"
# S3 Standard list prices (us-east-1), per 1,000 requests.
PUT_PRICE = 0.005
GET_PRICE = 0.0004
SECONDS_PER_MONTH = 30 * 24 * 3600


def trickle_producer(bootstrap, topic, parts, rate, record_size, idempotent, warmup_s, dur_s, q) -> None:
    """One record per partition of `parts` every 1/rate s, each produced alone; the
    delivery latency of every record acknowledged in the measured window."""
    from confluent_kafka import Producer

    lat: list[float] = []
    errors = [0, ""]
    t_measure = [0.0, 0.0]

    def on_dr(err, msg):
        if err is not None:
            errors[0] += 1
            errors[1] = str(err)
            return
        now = time.monotonic()
        if t_measure[0] <= now <= t_measure[1]:
            lat.append(msg.latency())

    p = Producer({
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": idempotent,
        "linger.ms": 0,
        "compression.type": "none",
        "message.timeout.ms": 120000,
        "on_delivery": on_dr,
    })
    p.list_topics(topic, timeout=30)
    value = b"x" * record_size
    total_rate = rate * len(parts)
    t0 = time.monotonic()
    t_measure[0], t_measure[1] = t0 + warmup_s, t0 + warmup_s + dur_s
    sent = 0
    while time.monotonic() < t_measure[1]:
        due = int((time.monotonic() - t0) * total_rate)
        while sent < due:
            try:
                p.produce(topic, value, partition=parts[sent % len(parts)])
            except BufferError:
                break
            sent += 1
        p.poll(min(0.01, max(0.0, t0 + (sent + 1) / total_rate - time.monotonic())))
    left = p.flush(60)
    q.put({"lat": lat, "sent": sent, "errors": errors[0], "last_error": errors[1], "undelivered": left})


def stats_requests(broker: Broker) -> dict:
    try:
        stats = json.loads((broker.data_dir / "stats.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return stats.get("store_requests", {})


# Modes: the producers' idempotence, and for `idempotentN` the broker's `--leader-ids N`
# (librdkafka's idempotent producer sends one partition per request, five in flight per
# connection; more ids, more connections).
MODES = {"plain": (False, []), "idempotent": (True, [])}


def mode_settings(mode: str) -> tuple[bool, list[str]]:
    """A mode's producers' idempotence and broker flags; `idempotentN` is idempotent
    producers against `--leader-ids N`."""
    if mode in MODES:
        return MODES[mode]
    n = mode.removeprefix("idempotent")
    if n != mode and n.isdigit() and 1 <= int(n) <= 1024:
        return True, ["--leader-ids", n]
    raise SystemExit(f"--trickle-modes: unknown mode {mode!r}; use some of {', '.join(MODES)} "
                     "or idempotentN (N leader ids, 1 to 1024)")


def run_mode(a, ctx, mode: str, s3, dir_: Path) -> bool:
    idempotent, broker_args = mode_settings(mode)
    proxy = S3Proxy(s3.endpoint, dir_ / f"proxy-{mode}.log", put_delay_ms=a.put_delay_ms,
                    get_delay_ms=a.get_delay_ms)
    broker = Broker(dir_ / mode, store="s3", extra_args=extra_args(a) + broker_args, binary=a.broker_bin.resolve(),
                    env_defaults=BENCH_ENV)
    broker.s3_endpoint = proxy.endpoint
    ok = True
    try:
        broker.start()
        create_topic(broker.bootstrap, a.trickle_partitions, TOPIC)
        time.sleep(2)
        q = ctx.Queue()
        parts = list(range(a.trickle_partitions))
        shares = [parts[i::a.trickle_producers] for i in range(a.trickle_producers)]
        procs = [ctx.Process(target=trickle_producer,
                             args=(broker.bootstrap, TOPIC, share, a.trickle_rate, a.record_size, idempotent,
                                   a.trickle_warmup, a.trickle_seconds, q))
                 for share in shares]
        for pr in procs:
            pr.start()
        time.sleep(a.trickle_warmup)
        before, before_purpose, cpu0 = proxy.stats(), stats_requests(broker), broker.cpu_seconds()
        t0 = time.monotonic()
        time.sleep(a.trickle_seconds)
        after, after_purpose, cpu1 = proxy.stats(), stats_requests(broker), broker.cpu_seconds()
        secs = time.monotonic() - t0
        results = [q.get(timeout=a.trickle_seconds + 180) for _ in procs]
        for pr in procs:
            pr.join(timeout=30)
        lat = sorted(x * 1000 for r in results for x in r["lat"])
        errors = sum(r["errors"] for r in results)
        undelivered = sum(r["undelivered"] for r in results)
        rate = {k: (after[k] - before[k]) / secs for k in ("put", "get", "list", "delete", "head")}
        pre = f"trickle_{mode}"
        fig(f"{pre}_records_per_s", len(lat) / secs)
        fig(f"{pre}_produce_p50", pct(lat, 50), "ms")
        fig(f"{pre}_produce_p99", pct(lat, 99), "ms")
        fig(f"{pre}_produce_max", lat[-1] if lat else float("nan"), "ms")
        fig(f"{pre}_puts_per_s", rate["put"])
        fig(f"{pre}_gets_per_s", rate["get"] + rate["head"])
        fig(f"{pre}_lists_per_s", rate["list"])
        month_puts = rate["put"] * SECONDS_PER_MONTH * PUT_PRICE / 1000
        month_gets = (rate["get"] + rate["head"] + rate["list"]) * SECONDS_PER_MONTH
        fig(f"{pre}_put_cost_per_month", month_puts, "USD")
        fig(f"{pre}_request_cost_per_month", month_puts + month_gets * GET_PRICE / 1000, "USD")
        for purpose, kinds in sorted(after_purpose.items()):
            puts = kinds.get("put", 0) - before_purpose.get(purpose, {}).get("put", 0)
            if puts:
                fig(f"{pre}_puts_per_s_{purpose}", puts / secs)
        fig(f"{pre}_broker_cpu", (cpu1 - cpu0) / secs, "cores")
        fig(f"{pre}_errors", errors)
        if errors or undelivered:
            note(f"{mode}: {errors} delivery errors ({results[0]['last_error']}), {undelivered} undelivered")
            ok = False
    finally:
        broker.stop(timeout=30)
        proxy.stop()
    return ok


def run_trickle(a, ctx) -> int:
    dir_ = a.dir
    dir_.mkdir(parents=True, exist_ok=True)
    note(f"s3 trickle: {a.trickle_partitions} partitions x {a.trickle_rate:g} request/s of {a.record_size} B, "
         f"{a.trickle_producers} producers, PUT +{a.put_delay_ms:g} ms, GET +{a.get_delay_ms:g} ms, "
         f"{a.trickle_warmup:g} s warm-up then {a.trickle_seconds:g} s measured; broker args {extra_args(a)}")
    s3 = s3_server(dir_)
    ok = True
    try:
        for mode in a.trickle_modes.split(","):
            ok &= run_mode(a, ctx, mode.strip(), s3, dir_)
    finally:
        close_s3_server()
    return 0 if ok else 1
