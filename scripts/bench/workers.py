"""The client processes (multiprocessing, spawn context): producers and consumers driven
with confluent-kafka, each reporting one dict on a queue.  Top-level functions, so that a
spawned child can import them by name (bench.workers.<name>); confluent_kafka is imported
inside them."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from bench.topics import SOAK_ABORT_EVERY, SOAK_KEYS


def random_values(size: int, n: int = 64) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


def producer_conf(bootstrap: str, args: dict) -> dict:
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


def producer_mode(conf: dict) -> str:
    """How a producer config writes, for the `*_mode` figures."""
    if conf.get("transactional.id"):
        return "transactional (idempotent)"
    return "idempotent" if conf.get("enable.idempotence") else "plain (enable.idempotence=false)"


def txn_producer_conf(bootstrap: str, args: dict, txn_id: str) -> dict:
    """The throughput phase's settings, as a transactional producer (which librdkafka
    makes idempotent: at most 5 requests in flight per broker)."""
    return {**producer_conf(bootstrap, args), "enable.idempotence": True, "transactional.id": txn_id}


def kafka_error_text(e: Exception) -> str:
    err = e.args[0] if e.args else None
    if hasattr(err, "name") and hasattr(err, "str"):
        return f"{err.name()}: {err.str()}"
    return str(e)


class _Gate(logging.Handler):
    """librdkafka's log lines, to stderr as usual, except while `quiet` (during
    init_transactions(): its failure is reported in one line by the parent, not also as
    TXNERR/FATAL lines)."""

    def __init__(self, txn_id: str):
        super().__init__()
        self.txn_id = txn_id
        self.quiet = False

    def emit(self, record):
        if not self.quiet:
            sys.stderr.write(f"%{record.levelname}|{self.txn_id}| {record.getMessage()}\n")


def txn_producer(bootstrap, topic, nrec, args, txn_id, barrier, q) -> None:
    """Like throughput_producer, in transactions: init_transactions(), then
    begin / produce args["txn_records"] records / commit_transaction(), the last one
    with what is left. Reports the time of every commit_transaction() call. A txn_id
    starting with "idempotent" makes the comparison phase's producer: the same, without
    transactions (flush() where the other commits)."""
    from confluent_kafka import KafkaException, Producer

    errors = [0, ""]

    def on_err(err, msg):
        if err is not None:
            errors[0] += 1
            errors[1] = str(err)

    gate = _Gate(txn_id)
    log = logging.getLogger(f"bench.{txn_id}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(gate)
    conf = txn_producer_conf(bootstrap, args, txn_id)
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
        q.put({"init_error": kafka_error_text(e)})
        barrier.abort()
        return
    p.poll(0)  # serves the log lines queued during init (still quiet)
    gate.quiet = False
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        return  # another producer (or the parent) gave up
    t0 = time.monotonic()
    commit_ms, committed, fail = _produce_transactions(p, topic, nrec, args, transactional)
    t1 = time.monotonic()
    left = p.flush(60)
    q.put({"t0": t0, "t1": t1, "n": committed, "commit_ms": commit_ms, "fail": fail, "errors": errors[0],
           "last_error": errors[1], "undelivered": left, "cpu": time.process_time()})


def _produce_transactions(p, topic, nrec, args, transactional) -> tuple[list[float], int, str]:
    """txn_producer's loop: nrec records in transactions of args["txn_records"]; returns
    the commit (or flush) times in ms, the records committed and the error that ended
    the loop early ("" if none)."""
    from confluent_kafka import KafkaException

    vals = random_values(args["record_size"])
    produce = p.produce
    per_txn = max(1, args["txn_records"])
    commit_ms: list[float] = []
    committed = 0
    fail = ""
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
        fail = kafka_error_text(e)
        try:
            if e.args and e.args[0].txn_requires_abort():
                p.abort_transaction(30)
        except KafkaException:
            pass
    return commit_ms, committed, fail


def throughput_producer(bootstrap, topic, nrec, args, barrier, q) -> None:
    from confluent_kafka import Producer

    errors = [0, ""]

    def on_err(err, msg):
        if err is not None:
            errors[0] += 1
            errors[1] = str(err)

    conf = producer_conf(bootstrap, args)
    conf["delivery.report.only.error"] = True
    conf["on_delivery"] = on_err
    p = Producer(conf)
    p.list_topics(topic, timeout=20)
    vals = random_values(args["record_size"])
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


def drain_consumer(bootstrap, topic, starts: dict, ends: dict, args, q, ready, isolation=None) -> None:
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
    c.list_topics(topic, timeout=20)  # connected before the clock starts
    remaining = {int(p): int(ends[p]) for p in starts if int(ends[p]) > int(starts[p])}
    ready.wait()
    t_ready = time.monotonic()
    # Assigned only now: librdkafka starts fetching on assign(), and what it prefetched
    # while the parent waited would not be timed.
    c.assign([TopicPartition(topic, int(p), int(o)) for p, o in starts.items()])
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


def rate_producer(bootstrap, topic, rate_rps, warmup_s, dur_s, args, ready, q) -> None:
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

    p = Producer({**producer_conf(bootstrap, args), "on_delivery": on_dr})
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


def e2e_consumer(bootstrap, topic, partitions, args, ready, q, stop) -> None:
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


def soak_producer(bootstrap, topic, parts, rate, record_size, counters, ready, start, stop, q,
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
    vals = random_values(record_size)
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


def idle_producer(bootstrap, topic, rate_rps, warmup_s, dur_s, idempotent, record_size) -> dict:
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
