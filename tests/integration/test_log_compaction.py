"""Log compaction (issue 11): `cleanup.policy=compact` keeps the latest record of each key
at its original offset, in every codec; tombstones go after `delete.retention.ms`; a
keyless record is refused; a Kafka Connect-style config topic stays small under a long
update loop while every key's latest value stays readable; and a broker killed in the
middle of cleaning or retention loses nothing it should keep and leaves no garbage."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import Broker, supervise
from test_admin_wire import incremental_alter_raw
from test_compaction import store_objects, wait_store_matches_stats
from test_kcat import kcat_bin
from test_retention import wait_for

# The cleaner flat out: no PUT budget on the s3 pass either (test_s3_budget covers it).
FAST = ["--compaction-interval-ms", "200", "--compaction-age-ms", "300", "--gc-grace-ms", "1000",
        "--orphan-grace-ms", "2000", "--retention-check-interval-ms", "300", "--max-puts-per-second", "0"]
# Rolls a segment a second after its first record; cleans whatever is dirty.
COMPACT = {"cleanup.policy": "compact", "segment.ms": "1000", "min.cleanable.dirty.ratio": "0.01",
           "delete.retention.ms": "4000"}
CODECS = ["gzip", "snappy", "lz4", "zstd"]


@pytest.fixture
def lbroker(request, tmp_path):
    b = Broker(tmp_path / "strata", extra_args=list(FAST))
    yield from supervise(request, b, start=False)


def create(b: Broker, topic: str, partitions: int, config: dict) -> None:
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1, config=config)])[topic].result(30)


def produce_keyed(b: Broker, topic: str, partition: int, records, codec: str = "none") -> list[tuple]:
    """[(offset, key, value)] of `records` [(key, value or None)], in batches of up to 25."""
    acked = []
    p = Producer({"bootstrap.servers": b.bootstrap, "compression.type": codec, "linger.ms": 20,
                  "acks": "all"})

    def cb(err, msg):
        assert err is None, err
        acked.append((msg.offset(), msg.key(), msg.value()))

    for i, (k, v) in enumerate(records):
        p.produce(topic, key=k, value=v, partition=partition, on_delivery=cb)
        if i % 25 == 24:
            assert p.flush(30) == 0
    assert p.flush(30) == 0 and len(acked) == len(records)
    return sorted(acked)


def latest(acked: list[tuple], tombstones: bool = True) -> list[tuple]:
    """The latest record of each key, in offset order (without tombstones if asked)."""
    by_key = {}
    for o, k, v in sorted(acked):
        by_key[k] = (o, k, v)
    return sorted(r for r in by_key.values() if tombstones or r[2] is not None)


def kcat_read(b: Broker, topic: str, partition: int) -> list[tuple]:
    """Everything kcat reads from the start to the end: [(offset, key, value or None)]."""
    out = subprocess.run(
        [kcat_bin(), "-C", "-b", b.bootstrap, "-t", topic, "-p", str(partition), "-o", "beginning",
         "-e", "-q", "-Z", "-f", "%o|%k|%s\\n"],
        capture_output=True, timeout=60, check=True).stdout.decode()
    rows = []
    for line in out.splitlines():
        o, k, v = line.split("|", 2)
        rows.append((int(o), k.encode(), None if v == "NULL" else v.encode()))
    return rows


def consume_all(b: Broker, topic: str, partition: int, hw: int) -> list[tuple]:
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "lc-check", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, partition, 0)])
    got = []
    deadline = time.monotonic() + 30
    while not got or got[-1][0] < hw - 1:
        assert time.monotonic() < deadline, got[-5:]
        m = c.poll(1.0)
        if m is not None and not m.error():
            got.append((m.offset(), m.key(), m.value()))
    c.close()
    return got


def wait_segmented(b: Broker) -> None:
    """Every flush object has been compacted into segments and collected."""
    wait_for("the tail to be compacted into segments", lambda: not store_objects(b, "segments/"), 30)


def test_latest_value_per_key_in_every_codec_then_tombstones_go(lbroker):
    b = lbroker.start()
    topic = "lc-keys"
    create(b, topic, len(CODECS), COMPACT)
    acked = {}
    for part, codec in enumerate(CODECS):
        recs = [(f"k{k}".encode(), f"k{k}-r{r}-{codec}".encode()) for r in range(12) for k in range(8)]
        recs += [(b"k0", None), (b"k1", None)]
        acked[part] = produce_keyed(b, topic, part, recs, codec)
    wait_segmented(b)
    # A second later, one more record per partition rolls the segment: the rest is cleanable.
    time.sleep(1.1)
    for part, codec in enumerate(CODECS):
        acked[part] += produce_keyed(b, topic, part, [(b"tail", b"tail")], codec)

    for part in range(len(CODECS)):
        want = latest(acked[part])
        assert len(want) == 9 and [r for r in want if r[2] is None] == [r for r in want if r[1] in (b"k0", b"k1")]
        # One record per live key, at its original offset; tombstones still there.
        wait_for(f"partition {part} to be compacted", lambda: kcat_read(b, topic, part) == want, 30)
    # Offsets never change: the high watermark is where it was.
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "wm"})
    for part in range(len(CODECS)):
        assert c.get_watermark_offsets(TopicPartition(topic, part), timeout=10) == (0, 12 * 8 + 3)
    c.close()
    # confluent-kafka reads the same.
    assert consume_all(b, topic, 0, 12 * 8 + 3) == latest(acked[0])

    # After delete.retention.ms, a pass removes the tombstones.
    for part in range(len(CODECS)):
        want = latest(acked[part], tombstones=False)
        wait_for(f"partition {part}'s tombstones to go", lambda: kcat_read(b, topic, part) == want, 30)
    log = b.log_text()
    assert "log cleaning pass" in log and "DeleteHorizon" in log

    # A record without a key is refused, as Kafka refuses it.
    errors = []
    p = Producer({"bootstrap.servers": b.bootstrap, "retries": 0})
    p.produce(topic, value=b"no key", partition=0, on_delivery=lambda err, msg: errors.append(err))
    p.flush(30)
    assert len(errors) == 1 and errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD, errors
    # ... while keyed records are still accepted.
    assert produce_keyed(b, topic, 0, [(b"k2", b"again")])[0][0] == 12 * 8 + 3


def read_to_end(b: Broker, topic: str) -> dict:
    """Reads from offset 0 to the live end (as Kafka Connect's KafkaBasedLog does): each
    key's last value seen."""
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "connect-reader", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 50})
    tp = TopicPartition(topic, 0, 0)
    c.assign([tp])
    seen = {}
    hw = c.get_watermark_offsets(tp, timeout=10)[1]
    deadline = time.monotonic() + 60
    while hw > 0:
        assert time.monotonic() < deadline, "read to end"
        m = c.poll(0.5)
        if m is None or m.error():
            pos = c.position([TopicPartition(topic, 0)])[0].offset
            if pos >= hw:
                hw = c.get_watermark_offsets(tp, timeout=10)[1]
                if pos >= hw:
                    break
            continue
        seen[m.key()] = m.value()
        if m.offset() >= hw - 1:
            hw = c.get_watermark_offsets(tp, timeout=10)[1]
            if m.offset() >= hw - 1:
                break
    c.close()
    return seen


def store_bytes(b: Broker) -> int:
    return sum(store_objects(b, "segments/").values()) + sum(store_objects(b, "compacted/").values())


@pytest.fixture
def slow_tail_broker(request, tmp_path):
    """FAST, but the tail waits 8 s to be compacted, as a light partition's tail waits
    compaction_age_ms (30 s) by default."""
    args = list(FAST)
    args[args.index("--compaction-age-ms") + 1] = "8000"
    yield from supervise(request, Broker(tmp_path / "strata", extra_args=args))


def test_a_topic_gone_quiet_after_its_roll_record_is_cleaned(slow_tail_broker):
    """Issue 26: 200 keys x 10 versions, 50 tombstones, and 3 s later one more record
    (which rolls Kafka's segment, segment.ms = 1 s); then silence. Kafka cleans everything
    before the roll record and, a delete.retention.ms later, drops the tombstones, without
    another write. So must Strata: object compaction keeps the roll record's chunk apart.
    The tail waits 8 s to be compacted, so that the burst and the roll record are compacted
    in one round (as with the default age)."""
    b = slow_tail_broker
    topic = "quiet-after-roll"
    create(b, topic, 1, {"cleanup.policy": "compact", "segment.ms": "1000",
                         "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "1000",
                         "min.compaction.lag.ms": "0"})
    burst = [(f"k{k}".encode(), f"v{k}-{n}".encode()) for n in range(10) for k in range(200)]
    acked = produce_keyed(b, topic, 0, burst)
    acked += produce_keyed(b, topic, 0, [(f"k{k}".encode(), None) for k in range(50)])
    time.sleep(3)
    acked += produce_keyed(b, topic, 0, [(b"roll", b"r")])
    hw = max(o for o, _, _ in acked) + 1
    want = latest(acked, tombstones=False)
    assert len(want) == 151

    def cleaned() -> bool:
        time.sleep(1)
        return consume_all(b, topic, 0, hw) == want

    wait_for("the quiet topic to be cleaned, its tombstones gone", cleaned, 90)


def test_connect_style_config_topic_stays_small_and_always_readable(lbroker):
    b = lbroker.start()
    # The operator's cluster-wide default (kafka-configs --entity-default): segments roll
    # after a second. The topic itself is created exactly as Kafka Connect creates its
    # config topic: one partition, cleanup.policy=compact, nothing else.
    assert incremental_alter_raw(b.bootstrap, "", [("log.roll.ms", 0, "1000")])[0] == 0
    topic = "connect-configs"
    create(b, topic, 1, {"cleanup.policy": "compact"})

    keys = [f"connector-{i}".encode() for i in range(20)]
    acked_seq = {}  # key -> latest acknowledged sequence
    lock = threading.Lock()
    stop = threading.Event()
    produced = {"bytes": 0, "n": 0}

    def writer():
        p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 0})
        seq = 0
        while not stop.is_set():
            key = keys[seq % len(keys)]
            value = b'{"seq": %d, "config": "%s"}' % (seq, b"x" * 200)

            def cb(err, msg, key=key, seq=seq):
                assert err is None, err
                with lock:
                    acked_seq[key] = max(acked_seq.get(key, -1), seq)

            p.produce(topic, key=key, value=value, on_delivery=cb)
            assert p.flush(30) == 0  # Connect writes its configs synchronously
            produced["bytes"] += len(key) + len(value)
            produced["n"] += 1
            seq += 1
            time.sleep(0.005)
        produced["seq"] = seq

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    sizes = []
    checks = 0
    start = time.monotonic()
    try:
        # STRATA_CONNECT_LOOP_S runs it longer (the closing note's measurement).
        while time.monotonic() - start < float(os.environ.get("STRATA_CONNECT_LOOP_S", "24")):
            with lock:
                before = dict(acked_seq)
            seen = read_to_end(b, topic)
            for key, seq in before.items():
                assert key in seen, f"{key} has no value readable"
                got = int(seen[key].split(b",")[0].split(b":")[1].rstrip(b"}"))
                assert got >= seq, f"{key}: read seq {got}, but {seq} was acknowledged before the read"
            checks += 1
            sizes.append((time.monotonic() - start, store_bytes(b), produced["bytes"]))
            time.sleep(1)
    finally:
        stop.set()
        t.join(30)
    assert checks >= 5 and produced["n"] > 500, (checks, produced)
    # The store holds the live keys, the active segment and garbage in its grace period,
    # not what was written: it does not grow with the writes.
    half = sizes[-1][0] / 2
    early = [s for at, s, _ in sizes if at <= half]
    late = [s for at, s, _ in sizes if at > half]
    written = produced["bytes"]
    print(f"\nconnect-style topic: {produced['n']} updates, {written} bytes written; store bytes over time: "
          f"{[(round(at), s) for at, s, _ in sizes]}")
    assert max(late) <= 1.5 * max(early) + 50_000, (early, late)
    assert max(late) < written / 2, (late, written)
    # A second later, one more update rolls the active segment: everything before it is
    # cleaned and the replaced objects collected.
    time.sleep(1.1)
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    p.produce(topic, key=keys[0], value=b'{"seq": %d}' % produced["seq"])
    assert p.flush(30) == 0
    acked_seq[keys[0]] = produced["seq"]
    final = wait_for("the store to shrink to about the live keys",
                     lambda: (s := store_bytes(b)) < 20_000 and s, 30)
    print(f"connect-style topic: store bytes after the loop: {final} (20 keys of ~260 bytes)")
    seen = read_to_end(b, topic)
    assert {k: int(v.split(b",")[0].split(b":")[1].rstrip(b"}")) for k, v in seen.items()} == acked_seq


def test_crash_during_cleaning_and_retention_loses_nothing_and_leaves_no_garbage(lbroker):
    b = lbroker
    b.extra_env["STRATA_FAILPOINT"] = "crash-after-clean-put"
    b.start()
    create(b, "lc-crash", 1, COMPACT)
    create(b, "lc-retained", 1, {"retention.ms": "3000"})
    acked = produce_keyed(b, "lc-crash", 0, [(f"k{k}".encode(), f"v{r}".encode()) for r in range(10) for k in range(10)])
    produce_keyed(b, "lc-retained", 0, [(b"r", b"x" * 100)] * 50)
    wait_segmented(b)
    time.sleep(1.1)
    acked += produce_keyed(b, "lc-crash", 0, [(b"tail", b"tail")])
    # The cleaner uploads its output, then the broker dies before the swap.
    deadline = time.monotonic() + 30
    while b.proc.poll() is None:
        assert time.monotonic() < deadline, "the failpoint did not fire"
        time.sleep(0.1)
    b.stop()
    assert store_objects(b, "compacted/"), "nothing was uploaded before the crash"

    del b.extra_env["STRATA_FAILPOINT"]
    b.start()
    want = latest(acked)
    wait_for("the partition to be compacted after the restart", lambda: kcat_read(b, "lc-crash", 0) == want, 30)
    # Retention drops lc-retained while the broker runs; SIGKILL right after the log
    # start moved, before the garbage collector deleted the objects.
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "wm"})
    wait_for("retention to move the log start",
             lambda: c.get_watermark_offsets(TopicPartition("lc-retained", 0), timeout=10)[0] == 50, 30)
    c.close()
    b.kill()
    b.start()
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "wm"})
    assert c.get_watermark_offsets(TopicPartition("lc-retained", 0), timeout=10) == (50, 50)
    c.close()
    assert kcat_read(b, "lc-crash", 0) == want
    # The upload the crash left unreferenced, the replaced segments and the retained
    # topic's objects are all gone after their grace periods.
    wait_store_matches_stats(b)
    b.restart()
    assert kcat_read(b, "lc-crash", 0) == want
