"""Durability against a real S3-compatible server process (moto's server, see conftest).

Only in the STRATA_TEST_STORE=s3 pass: every test here is about the bucket being the
only durable copy.  Each broker gets a bucket of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import STRATA_BIN, S3_ENV, TEST_STORE, Broker, TcpProxy, check_health, free_port, s3_server, supervise

pytestmark = pytest.mark.skipif(TEST_STORE != "s3", reason="durability tests run in the STRATA_TEST_STORE=s3 pass")

SEGMENTS = "strata/segments/"  # the broker's store URL is s3://BUCKET/strata


# ------------------------------------------------------------------ helpers
@pytest.fixture
def s3broker(request, tmp_path):
    """An s3 broker that the test starts itself (after setting extra_args/extra_env)."""
    yield from supervise(request, Broker(tmp_path / "strata", store="s3"), start=False)


def create_topics(bootstrap, topics: dict[str, int]):
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the futures resolve
    fs = admin.create_topics([NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items()])
    for f in fs.values():
        f.result(timeout=60)


def read_partitions(bootstrap, topic, partitions, timeout=120, start=0):
    """{(partition, offset): (key, value)} from `start` to the high watermark, and the watermarks."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "fetch.wait.max.ms": 100})
    out, hw = {}, {}
    try:
        for p in range(partitions):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            hw[p] = hi
        # `start`: one offset for every partition, or {partition: offset}.
        starts = start if isinstance(start, dict) else {p: start for p in hw}
        c.assign([TopicPartition(topic, p, starts[p]) for p, hi in hw.items() if hi > starts[p]])
        want = sum(max(0, hi - starts[p]) for p, hi in hw.items())
        deadline = time.monotonic() + timeout
        while len(out) < want:
            assert time.monotonic() < deadline, f"read {len(out)}/{want} of {topic}"
            m = c.poll(1.0)
            if m is None:
                continue
            assert not m.error(), m.error()
            k = (m.partition(), m.offset())
            assert k not in out, f"offset delivered twice: {k}"
            out[k] = (m.key(), m.value())
    finally:
        c.close()
    return out, hw


def assert_acked_exact(acked, got, hw, sent_values):
    """Every acknowledged (partition, offset) holds exactly what was acknowledged there;
    offsets are contiguous from 0 to the high watermark; an unacknowledged offset holds
    one of the records that was sent (a client retry of a lost ack), never anything else."""
    for p, hi in hw.items():
        offs = sorted(o for (pp, o) in got if pp == p)
        assert offs == list(range(hi)), f"partition {p}: offsets not contiguous 0..{hi}"
    missing = [k for k in acked if k not in got]
    assert not missing, f"{len(missing)} acknowledged records missing, e.g. {missing[:5]}"
    wrong = [k for k, kv in acked.items() if got[k] != kv]
    assert not wrong, f"{len(wrong)} offsets hold something else than acknowledged, e.g. {wrong[:3]}"
    stray = [k for k in got if k not in acked and got[k] not in sent_values]
    assert not stray, f"{len(stray)} offsets hold records never sent, e.g. {stray[:3]}"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def request_counts(log: str):
    m = re.findall(r"puts=(\d+) gets=(\d+) lists=(\d+) deletes=(\d+)", log)
    return tuple(map(int, m[-1])) if m else None


# ------------------------------------------------------------------ tests
def test_sigkill_during_100k_produce_keeps_every_ack(s3broker):
    """SIGKILL while a confluent-kafka producer (acks=all, keyed, 4 partitions) sends
    100,000 records; restart on the same data dir and bucket; every ack is exact."""
    b = s3broker.start()
    topic, parts, total = "kill-100k", 4, 100_000
    create_topics(b.bootstrap, {topic: parts})

    acked, errors = {}, []
    sent_values = set()
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 5,
                  "message.timeout.ms": 120000, "retry.backoff.ms": 200})

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked[(msg.partition(), msg.offset())] = (msg.key(), msg.value())

    killed_at = None
    for i in range(total):
        key = f"key-{i % 997}".encode()
        value = f"v{i:06d}-".encode() + b"x" * (i % 200)
        sent_values.add((key, value))
        while True:
            try:
                p.produce(topic, key=key, value=value, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
        if killed_at is None and len(acked) >= 30_000:
            killed_at = len(acked)
            b.kill()          # SIGKILL with produce requests in flight
            b.start()         # same data dir, same bucket
    assert killed_at is not None, f"only {len(acked)} acks before the end of the produce loop"
    assert p.flush(180) == 0
    assert len(acked) > killed_at, "no acknowledgement after the restart"

    got, hw = read_partitions(b.bootstrap, topic, parts)
    assert_acked_exact(acked, got, hw, sent_values)
    # keyed: every record sits in the partition its key hashes to (same key, same partition)
    where = defaultdict(set)
    for (part, _), (k, _) in got.items():
        where[k].add(part)
    assert all(len(s) == 1 for s in where.values()), "a key landed in two partitions"
    print(f"\nkilled after {killed_at} acks; {len(acked)} acked, {len(got)} stored, "
          f"{len(errors)} delivery errors ({set(str(e.code()) for e in errors)})")


def test_store_unreachable_20s_mid_load(s3broker, tmp_path):
    """The S3 server becomes unreachable for 20 s (a TCP relay between broker and moto is
    cut: new connections refused, open ones reset; moto itself keeps running, so what is
    tested is the broker's side of an outage) while a producer sends ~2 MB/s."""
    b = s3broker
    proxy = TcpProxy(b.s3.port)
    b.s3_endpoint = f"http://127.0.0.1:{proxy.port}"
    cfg = tmp_path / "strata.toml"
    cfg.write_text("buffer_max_bytes = 33554432\n")
    b.extra_args += ["--config", str(cfg)]
    b.start()
    topic, parts = "outage", 3
    create_topics(b.bootstrap, {topic: parts})

    acked, errors, ack_times = {}, [], []
    sent_values = set()
    cb_lock = threading.Lock()

    def cb(err, msg):
        with cb_lock:
            if err is not None:
                errors.append(err)
            else:
                acked[(msg.partition(), msg.offset())] = (msg.key(), msg.value())
                ack_times.append(time.monotonic())

    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 5,
                  "message.timeout.ms": 180000, "request.timeout.ms": 10000})

    def send(n, start, rate):
        t0 = time.monotonic()
        for i in range(start, start + n):
            key = f"k{i % 101}".encode()
            value = f"{i:08d}".encode() + b"o" * 1000
            sent_values.add((key, value))
            while True:
                try:
                    p.produce(topic, key=key, value=value, on_delivery=cb)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
            ahead = (i - start + 1) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)

    # Warm-up: 10,000 records stored and read back before the outage.
    send(10_000, 0, 5000)
    assert p.flush(60) == 0
    warm_acked = dict(acked)

    peak = [0]
    stop_sampling = threading.Event()

    def sample():
        while not stop_sampling.is_set() and b.running:
            peak[0] = max(peak[0], rss_kib(b.proc.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    loader = threading.Thread(target=send, args=(70_000, 10_000, 2000), daemon=True)  # ~35 s at ~2 MB/s
    loader.start()
    time.sleep(5)

    proxy.cut()
    cut_at = time.monotonic()
    acks_at_cut = len(ack_times)
    # During the outage: data written before it is still served (write-through block cache).
    during, _ = read_partitions(b.bootstrap, topic, parts, timeout=15)
    cached_ok = all(during.get(k) == v for k, v in warm_acked.items())
    time.sleep(max(0.0, 20 - (time.monotonic() - cut_at)))
    assert b.running, "broker died during the store outage"
    rss_during_outage = peak[0]
    proxy.restore()
    restored_at = time.monotonic()

    loader.join(timeout=120)
    assert not loader.is_alive()
    assert p.flush(180) == 0
    stop_sampling.set()
    sampler.join()

    assert b.running, "broker died after the store outage"
    acked_during = sum(1 for t in ack_times if cut_at + 1 < t < restored_at - 1)
    acked_after = sum(1 for t in ack_times if t > restored_at)
    assert acked_after > 0, "producer made no progress after the store came back"
    assert acked_during < len(ack_times) - acks_at_cut, "nothing waited for the store"
    got, hw = read_partitions(b.bootstrap, topic, parts)
    assert_acked_exact(acked, got, hw, sent_values)
    assert peak[0] < 600 * 1024, f"broker RSS peaked at {peak[0] // 1024} MiB"
    assert cached_ok, "records stored before the outage were not readable during it"
    print(f"\nacks: {acks_at_cut} before the cut, {acked_during} during the 20 s outage, {acked_after} after; "
          f"{len(errors)} delivery errors {sorted(set(e.name() for e in errors))}; "
          f"peak RSS {peak[0] // 1024} MiB (during outage {rss_during_outage // 1024} MiB); "
          f"{len(warm_acked)} pre-outage records read back during the outage")

    total_bytes = sum(len(k) + len(v) for k, v in got.values())
    b.stop()
    counts = request_counts(b.log_text())
    assert counts is not None, "no object_store_requests line at shutdown"
    puts, gets, lists, deletes = counts
    gb = total_bytes / 1e9
    print(f"object store requests: puts={puts} gets={gets} lists={lists} deletes={deletes} "
          f"for {total_bytes / 1e6:.1f} MB produced: {puts / gb:.0f} PUTs/GB, {gets / gb:.0f} GETs/GB")
    proxy.close()


def test_wiped_data_dir_recovers_from_bucket(s3broker):
    """Topics, records at their offsets and committed group offsets come back from the
    bucket alone after SIGKILL + wiping the data directory."""
    b = s3broker
    b.extra_args += ["--store-snapshot-interval-ms", "1000"]
    b.start()
    topics = {"wipe-a": 1, "wipe-b": 3}
    create_topics(b.bootstrap, topics)
    acked = {}

    def cb(err, msg):
        assert err is None, err
        acked[(msg.topic(), msg.partition(), msg.offset())] = (msg.key(), msg.value())

    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(3000):
        t = "wipe-a" if i % 3 == 0 else "wipe-b"
        p.produce(t, key=f"k{i % 13}".encode(), value=f"wipe-{i}".encode(), on_delivery=cb)
        p.poll(0)
    assert p.flush(60) == 0

    group = "wipe-group"
    committed = {}
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    for t, n in topics.items():
        for part in range(n):
            _, hi = c.get_watermark_offsets(TopicPartition(t, part), timeout=30)
            committed[(t, part)] = hi // 2 + 1
    c.commit(offsets=[TopicPartition(t, part, off) for (t, part), off in committed.items()], asynchronous=False)
    c.close()

    time.sleep(3)  # > --store-snapshot-interval-ms: the snapshot in the bucket holds all of it
    b.kill()
    shutil.rmtree(b.data_dir)
    b.data_dir.mkdir()
    b.start()

    md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=30)
    for t, n in topics.items():
        assert t in md.topics, f"topic {t} missing after recovery: {sorted(md.topics)}"
        assert len(md.topics[t].partitions) == n
    for t, n in topics.items():
        got, hw = read_partitions(b.bootstrap, t, n)
        want = {(p_, o): kv for (tt, p_, o), kv in acked.items() if tt == t}
        assert got == want, f"{t}: {len(set(want) - set(got))} missing, {len(set(got) - set(want))} unexpected"
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        back = c.committed([TopicPartition(t, part) for (t, part) in committed], timeout=30)
        assert {(tp.topic, tp.partition): tp.offset for tp in back} == committed
    finally:
        c.close()
    assert "recover" in b.log_text().lower()


def test_recovery_is_exact_deleted_stays_deleted_unacked_never_appears(s3broker):
    """Issue 10: after SIGKILL and a wiped data directory, the bucket alone rebuilds
    exactly what was acknowledged. A deleted topic stays deleted, records below a
    DeleteRecords start stay deleted, an upload whose commit never happened does not
    appear, every acknowledged record is at its offset, group offsets are the last
    committed. The snapshot interval is left at its default (60 s), so everything after
    the first snapshot comes back from the shipped log."""
    b = s3broker
    b.start()
    create_topics(b.bootstrap, {"exact-kept": 2, "exact-gone": 1})
    acked = {}

    def cb(err, msg):
        assert err is None, err
        acked[(msg.topic(), msg.partition(), msg.offset())] = (msg.key(), msg.value())

    def produce(n, tag):
        p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 5})
        for i in range(n):
            for t in ("exact-kept", "exact-gone"):
                p.produce(t, key=f"k{i % 7}".encode(), value=f"{tag}-{t}-{i}".encode(),
                          partition=i % (2 if t == "exact-kept" else 1), on_delivery=cb)
            p.poll(0)
        assert p.flush(60) == 0

    produce(500, "first")
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    tp0 = TopicPartition("exact-kept", 0, 100)
    assert admin.delete_records([tp0])[tp0].result(30).low_watermark == 100
    admin.delete_topics(["exact-gone"])["exact-gone"].result(30)
    committed = {0: 200, 1: 150}
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "exact-group",
                  "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition("exact-kept", p_, o) for p_, o in committed.items()],
             asynchronous=False)
    c.close()
    acked = {k: v for k, v in acked.items() if k[0] == "exact-kept"}
    before = len(acked)
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(300):
        p.produce("exact-kept", value=f"second-{i}".encode(), partition=i % 2, on_delivery=cb)
        p.poll(0)
    assert p.flush(60) == 0
    assert len(acked) == before + 300
    b.kill()

    # An upload that reaches the bucket but whose commit never happens.
    b.extra_env["STRATA_FAILPOINT"] = "crash-before-commit"
    b.start()
    failed = []
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "message.timeout.ms": 3000})
    for i in range(50):
        p.produce("exact-kept", value=f"never-acked-{i}".encode(), partition=i % 2,
                  on_delivery=lambda err, _m: failed.append(err))
    p.poll(0)
    assert b.proc.wait(timeout=30) != 0
    assert "failpoint crash-before-commit" in b.log_text()
    assert p.flush(30) == 0 and len(failed) == 50 and all(e is not None for e in failed)
    b.stop()
    del b.extra_env["STRATA_FAILPOINT"]

    shutil.rmtree(b.data_dir)
    b.data_dir.mkdir()
    b.start()
    md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=30)
    assert "exact-gone" not in md.topics, "a deleted topic came back"
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "exact-check"})
    try:
        lo, _ = c.get_watermark_offsets(TopicPartition("exact-kept", 0), timeout=30)
        assert lo == 100, f"log start {lo} after recovery"
    finally:
        c.close()
    got, hw = read_partitions(b.bootstrap, "exact-kept", 2, start={0: 100, 1: 0})
    want = {(p_, o): kv for (_, p_, o), kv in acked.items() if not (p_ == 0 and o < 100)}
    assert got == want, (f"{len(set(want) - set(got))} acknowledged missing, "
                         f"{len(set(got) - set(want))} unexpected, e.g. {sorted(set(got) - set(want))[:3]}")
    assert hw == {p_: 1 + max(o for (pp, o) in want if pp == p_) for p_ in (0, 1)}
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "exact-group", "enable.auto.commit": False})
    try:
        back = c.committed([TopicPartition("exact-kept", p_) for p_ in committed], timeout=30)
        assert {tp.partition: tp.offset for tp in back} == committed
    finally:
        c.close()
    # New records continue right after the recovered ones.
    new = []
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    p.produce("exact-kept", value=b"after", partition=1,
              on_delivery=lambda err, m: new.append((err, m.offset())))
    assert p.flush(30) == 0
    assert new == [(None, hw[1])]
    assert "entries_replayed" in b.log_text()


def test_sigkill_after_a_ride_before_its_commit_recovers_exactly(s3broker):
    """Issue 23: on the leader a flush object also carries the committed metadata log
    entries not yet in the bucket (`metadata/ride.rs`). The broker dies (failpoint
    crash-after-ride) after such an object is in the bucket, and the acknowledgements
    it released have gone out, but before its own records are committed; then its data
    directory is wiped. Recovery from the bucket alone brings back every acknowledged
    record at its offset, offsets stay contiguous, and the dead round's records (never
    acknowledged) appear only as a producer's retry would put them. The object, never
    committed, is collected by the orphan sweep once a snapshot covers what it carried."""
    b = s3broker
    b.extra_env["STRATA_FAILPOINT"] = "crash-after-ride"
    b.extra_args += ["--orphan-grace-ms", "2000", "--store-snapshot-interval-ms", "3600000"]
    b.start()
    topic = "ride-crash"
    create_topics(b.bootstrap, {topic: 4})
    acked, sent = {}, set()
    lock = threading.Lock()

    def trickle(tag):
        p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 0,
                      "message.timeout.ms": 5000, "retries": 0})

        def cb(err, msg):
            if err is None:
                with lock:
                    acked[(msg.partition(), msg.offset())] = (msg.key(), msg.value())

        for i in range(4000):
            if b.proc.poll() is not None:
                break
            v = f"{tag}-{i}".encode()
            with lock:
                sent.add((None, v))
            p.produce(topic, value=v, partition=i % 4, on_delivery=cb)
            p.poll(0)
            time.sleep(0.002)
        p.flush(15)

    threads = [threading.Thread(target=trickle, args=(t,)) for t in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert b.proc.wait(timeout=30) != 0, "the failpoint never fired: no round carried log entries"
    log = b.log_text()
    assert "failpoint crash-after-ride" in log
    line = next(l for l in log.splitlines() if "failpoint crash-after-ride" in l)
    ride = re.search(r"(segments/\S+-log-[0-9-]+\.seg)", line)
    assert ride, line
    assert acked, "nothing was acknowledged before the crash"
    b.stop()
    del b.extra_env["STRATA_FAILPOINT"]

    shutil.rmtree(b.data_dir)
    b.data_dir.mkdir()
    b.extra_args[b.extra_args.index("--store-snapshot-interval-ms") + 1] = "1000"
    b.start()
    got, hw = read_partitions(b.bootstrap, topic, 4)
    assert_acked_exact(acked, got, hw, sent)
    key = "strata/" + ride.group(1)
    deadline = time.monotonic() + 30
    while key in b.s3.list_keys(b.bucket, SEGMENTS) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert key not in b.s3.list_keys(b.bucket, SEGMENTS), f"the dead round's object {key} was never collected"


def test_orphan_objects_are_collected_committed_ones_kept(s3broker):
    """A crash between upload and commit (STRATA_FAILPOINT=crash-before-commit) leaves an
    object no index entry names; it is deleted after --orphan-grace-ms, committed objects
    stay and stay readable."""
    b = s3broker
    b.start()
    topic = "orphans"
    create_topics(b.bootstrap, {topic: 2})
    acked = {}
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(500):
        p.produce(topic, key=f"k{i % 7}".encode(), value=f"committed-{i}".encode(),
                  on_delivery=lambda err, m: err is None and acked.__setitem__((m.partition(), m.offset()), (m.key(), m.value())))
    assert p.flush(60) == 0 and len(acked) == 500
    b.stop()
    committed_objects = b.s3.list_keys(b.bucket, SEGMENTS)
    assert committed_objects, "no segment objects after a normal run"

    # A run that aborts right after uploading the next segment, before committing it.
    b.extra_env["STRATA_FAILPOINT"] = "crash-before-commit"
    b.start()
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "message.timeout.ms": 5000})
    p.produce(topic, key=b"orphan", value=b"never-committed")
    p.flush(10)
    deadline = time.monotonic() + 20
    while b.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    rc = b.proc.poll()
    assert rc is not None and rc != 0, f"failpoint did not abort the broker (rc={rc})"
    assert "failpoint crash-before-commit" in b.log_text()
    b.stop()
    orphans = set(b.s3.list_keys(b.bucket, SEGMENTS)) - set(committed_objects)
    assert orphans, "the aborted run left no uploaded object"

    # Restart normally: the orphan is not referenced (its record is not in the log) ...
    del b.extra_env["STRATA_FAILPOINT"]
    b.extra_args += ["--orphan-grace-ms", "2000"]
    b.start()
    got, hw = read_partitions(b.bootstrap, topic, 2)
    assert got == acked, "the log changed across the aborted run"
    # ... and is deleted after the grace period; every committed object stays.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = b.s3.list_keys(b.bucket, SEGMENTS)
        if not orphans & set(now):
            break
        time.sleep(0.5)
    now = b.s3.list_keys(b.bucket, SEGMENTS)
    assert not orphans & set(now), f"orphans still there after the grace period: {orphans & set(now)}"
    assert {k: now.get(k) for k in committed_objects} == committed_objects, "a committed object was deleted or changed"
    assert "orphan objects deleted" in b.log_text()
    # Committed data is still readable from the store after another restart (cold cache).
    b.restart()
    got, _ = read_partitions(b.bootstrap, topic, 2)
    assert got == acked


def test_missing_bucket_fails_startup_in_one_line(tmp_path):
    """Start-up against a bucket that does not exist exits non-zero with one clear line."""
    srv = s3_server(tmp_path)
    bucket = "strata-no-such-bucket-4242"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(S3_ENV)
    env["AWS_ENDPOINT_URL"] = srv.endpoint
    env["NO_COLOR"] = "1"
    env["STRATA_METRICS_LISTEN"] = "none"
    port = free_port()
    r = subprocess.run(
        [str(STRATA_BIN), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"),
         "--store", f"s3://{bucket}/strata"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    final = [ln for ln in r.stderr.splitlines() if ln.startswith("strata:")]
    assert len(final) == 1, r.stderr
    line = final[0]
    print(f"\n{line}")
    assert bucket in line and "does not exist" in line, line
    assert "panicked" not in r.stderr


def test_credentials_and_region_from_aws_profile_files(tmp_path):
    """No AWS_ACCESS_KEY_ID / AWS_REGION in the environment: the broker takes both from
    the AWS profile files through aws-config's chain (instance metadata is disabled, so a
    broken chain fails the start-up probe instead of reaching for 169.254.169.254)."""
    srv = s3_server(tmp_path)
    bucket = srv.new_bucket()
    (tmp_path / "credentials").write_text(
        f"[strata-test]\naws_access_key_id = {S3_ENV['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {S3_ENV['AWS_SECRET_ACCESS_KEY']}\n")
    (tmp_path / "config").write_text("[profile strata-test]\nregion = eu-west-3\n")
    b = Broker(tmp_path / "strata", store="s3", bucket=bucket)
    env = {
        "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_REGION": None,
        "AWS_PROFILE": "strata-test",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
    }
    orig = b.environment

    def environment():
        e = orig()
        for k, v in env.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e

    b.environment = environment
    try:
        b.start()
        p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
        p.produce("profile-creds", value=b"signed with profile credentials")
        assert p.flush(30) == 0
        deadline = time.monotonic() + 10
        while not srv.list_keys(bucket, SEGMENTS) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert srv.list_keys(bucket, SEGMENTS), "nothing uploaded with the profile's credentials"
        assert check_health(b) == []
    finally:
        b.stop()


def read_values(bootstrap, topic, partitions, isolation, timeout=60):
    """Every value of `topic` read with `isolation`, until each partition's position
    reaches its end (markers leave offsets no record holds, so offsets are not counted)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": isolation, "fetch.wait.max.ms": 100})
    values = []
    try:
        ends = {}
        for p in range(partitions):
            _, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            ends[p] = hi
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while True:
            pos = {tp.partition: tp.offset for tp in c.position([TopicPartition(topic, p) for p in ends])}
            if all(pos[p] >= hi for p, hi in ends.items()):
                break
            assert time.monotonic() < deadline, f"read {len(values)} values, positions {pos}, ends {ends}"
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            values.append(m.value().decode())
    finally:
        c.close()
    return values


def test_wiped_data_dir_keeps_transactions(s3broker):
    """Transaction state comes back from the bucket alone: after SIGKILL and a wiped data
    directory, read_committed still sees exactly the committed transactions (the aborted
    one stays hidden), the transaction left open is aborted by its timeout, the committed
    transactional offsets are the group's, and the same transactional id starts again."""
    b = s3broker
    b.extra_args += ["--store-snapshot-interval-ms", "1000"]
    b.start()
    create_topics(b.bootstrap, {"txw": 2, "txw-in": 1})
    conf = {"bootstrap.servers": b.bootstrap, "linger.ms": 2}
    done = Producer({**conf, "transactional.id": "wipe-done"})
    done.init_transactions(30)
    for n, commit in enumerate([True, False, True]):
        done.begin_transaction()
        for i in range(50):
            done.produce("txw", key=f"k{i}".encode(), value=f"t{n}-{i}".encode())
        if n == 2:
            meta = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "wipe-txn-group"})
            done.send_offsets_to_transaction([TopicPartition("txw-in", 0, 7)],
                                             meta.consumer_group_metadata(), 30)
            meta.close()
        done.flush(30)
        (done.commit_transaction if commit else done.abort_transaction)(30)
    # Left open with records in it, its producer killed with the broker.
    hang = Producer({**conf, "transactional.id": "wipe-open", "transaction.timeout.ms": 5000})
    hang.init_transactions(30)
    hang.begin_transaction()
    for i in range(20):
        hang.produce("txw", value=f"open-{i}".encode())
    assert hang.flush(30) == 0
    time.sleep(3)  # > --store-snapshot-interval-ms
    b.kill()
    shutil.rmtree(b.data_dir)
    b.data_dir.mkdir()
    b.start()

    # The open transaction times out (5 s from its start) and its records never show.
    deadline = time.monotonic() + 60
    while True:
        committed = read_values(b.bootstrap, "txw", 2, "read_committed")
        if len(committed) >= 100:
            break
        assert time.monotonic() < deadline, f"read_committed stuck at {len(committed)} records"
        time.sleep(1)
    assert sorted(committed) == sorted([f"t{n}-{i}" for n in (0, 2) for i in range(50)])
    everything = read_values(b.bootstrap, "txw", 2, "read_uncommitted")
    assert len(everything) == 170  # all three transactions and the open one's 20
    deadline = time.monotonic() + 15
    while "aborting a transaction past its timeout" not in b.log_text():
        assert time.monotonic() < deadline, "the open transaction was not aborted by its timeout"
        time.sleep(0.5)

    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "wipe-txn-group"})
    try:
        assert c.committed([TopicPartition("txw-in", 0)], timeout=30)[0].offset == 7
    finally:
        c.close()
    again = Producer({**conf, "transactional.id": "wipe-done"})
    again.init_transactions(30)
    again.begin_transaction()
    again.produce("txw", key=b"k", value=b"after")
    again.commit_transaction(30)
    assert "after" in read_values(b.bootstrap, "txw", 2, "read_committed")
