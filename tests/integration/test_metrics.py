"""The metrics listener: /metrics scraped after a known produce, consume and offset
commit; /health and /ready; JSON logs; a taken metrics port stops start-up in one line."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import STRATA_BIN, Broker, free_port, supervise

PARTITIONS = 3
PER_PARTITION = 10
VALUE = b"v" * 100
# Committed offsets per partition, and so the lag each must show (high watermark 10).
COMMITTED = {0: 10, 1: 5, 2: 0}

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@pytest.fixture
def mbroker(request, tmp_path):
    port = free_port()
    b = Broker(tmp_path / "strata",
               extra_args=["--metrics-listen", f"127.0.0.1:{port}", "--log-format", "json"])
    b.metrics_port = port
    yield from supervise(request, b)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)] from the Prometheus text format."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    series: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(2) or ""))
        series.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return series


def value(series, name: str, **labels) -> float:
    found = [v for l, v in series.get(name, []) if all(l.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found} in {series.get(name)}"
    return found[0]


def wait_ready(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, body = get(port, "/ready")
        if status == 200:
            return
        assert status == 503 and body.startswith("not ready: "), (status, body)
        assert time.monotonic() < deadline, f"/ready still {status}: {body}"
        time.sleep(0.1)



def test_lag_against_the_lso_and_transactions_counted(mbroker):
    """An open transaction holds back the lag of read_committed consumers
    (`strata_consumer_lag_stable`, against the last stable offset), not the plain lag
    (against the high watermark); its commit is counted."""
    port = mbroker.metrics_port
    wait_ready(port)
    topic = "lso-" + uuid.uuid4().hex[:8]
    group = "g-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": mbroker.bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=1)]).values():
        f.result(timeout=10)
    plain = Producer({"bootstrap.servers": mbroker.bootstrap})
    for i in range(3):
        plain.produce(topic, VALUE, partition=0)
    assert plain.flush(15) == 0
    c = Consumer({"bootstrap.servers": mbroker.bootstrap, "group.id": group})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    finally:
        c.close()
    txn = Producer({"bootstrap.servers": mbroker.bootstrap, "transactional.id": "lag-" + group})
    txn.init_transactions(15)
    txn.begin_transaction()
    for i in range(4):
        txn.produce(topic, VALUE, partition=0)
    assert txn.flush(15) == 0

    def lags():
        s = scrape(port)
        return (value(s, "strata_consumer_lag", group=group, topic=topic, partition="0"),
                value(s, "strata_consumer_lag_stable", group=group, topic=topic, partition="0"))

    assert lags() == (6, 2)  # high watermark 7, last stable offset 3, committed 1
    txn.commit_transaction(15)
    assert lags() == (7, 7)  # + the commit marker; nothing is unstable any more
    assert value(scrape(port), "strata_transactions_total", outcome="commit") == 1


def test_metrics_after_a_known_run(mbroker):
    port = mbroker.metrics_port
    assert get(port, "/health") == (200, "ok\n")
    wait_ready(port)
    topic = "metrics-" + uuid.uuid4().hex[:8]
    group = "g-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": mbroker.bootstrap})
    for f in admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS)]).values():
        f.result(timeout=10)

    p = Producer({"bootstrap.servers": mbroker.bootstrap, "linger.ms": 5})
    for partition in range(PARTITIONS):
        for i in range(PER_PARTITION):
            p.produce(topic, VALUE, key=b"k%d" % i, partition=partition)
    assert p.flush(15) == 0

    c = Consumer({"bootstrap.servers": mbroker.bootstrap, "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        c.assign([TopicPartition(topic, i, 0) for i in range(PARTITIONS)])
        got = 0
        deadline = time.monotonic() + 15
        while got < PARTITIONS * PER_PARTITION and time.monotonic() < deadline:
            for m in c.consume(100, timeout=1):
                assert m.error() is None, m.error()
                got += 1
        assert got == PARTITIONS * PER_PARTITION
        c.commit(offsets=[TopicPartition(topic, i, o) for i, o in COMMITTED.items()],
                 asynchronous=False)
    finally:
        c.close()

    s = scrape(port)
    assert value(s, "strata_requests_total", api="Produce") > 0
    assert value(s, "strata_requests_total", api="Fetch") > 0
    assert value(s, "strata_requests_total", api="OffsetCommit") >= 1
    assert value(s, "strata_request_duration_seconds_count", api="Produce") > 0
    # What the clients did: every record counted once on produce, and read back.
    records = PARTITIONS * PER_PARTITION
    assert value(s, "strata_produce_records_total", topic=topic) == records
    produced = value(s, "strata_produce_bytes_total", topic=topic)
    assert produced >= records * len(VALUE)
    assert value(s, "strata_fetch_records_total", topic=topic) >= records
    assert value(s, "strata_fetch_bytes_total", topic=topic) >= produced
    assert value(s, "strata_topic_partitions", topic=topic) == PARTITIONS
    assert value(s, "strata_topic_bytes", topic=topic) >= produced
    # Requests are counted by purpose: the produced records are in data PUTs, the
    # metadata log in metadata PUTs.
    assert value(s, "strata_store_requests_total", kind="put", purpose="data") > 0
    assert value(s, "strata_store_requests_total", kind="put", purpose="metadata") > 0
    assert value(s, "strata_flushes_total") > 0
    assert value(s, "strata_flush_bytes_count") > 0
    # The consumer lag equals the real lag: high watermark 10 minus each committed offset.
    lags = {int(l["partition"]): v for l, v in s["strata_consumer_lag"]
            if l["group"] == group and l["topic"] == topic}
    assert lags == {i: PER_PARTITION - o for i, o in COMMITTED.items()}
    assert value(s, "strata_consumer_group_lag", group=group) == sum(lags.values())
    assert value(s, "strata_consumer_group_partitions") == len(COMMITTED)
    # A lone broker leads its metadata and has applied all of it.
    assert value(s, "strata_raft_role", role="leader") == 1
    assert value(s, "strata_raft_apply_lag") == 0
    assert value(s, "strata_raft_applied_index") > 0
    assert value(s, "strata_brokers_live") == 1
    assert value(s, "strata_connections_open") >= 0

    assert get(port, "/ready") == (200, "ready\n")
    assert get(port, "/nope")[0] == 404
    # JSON logs: one object per line.
    lines = [ln for ln in mbroker.log_text().splitlines() if ln.startswith("{")]
    assert any(json.loads(ln).get("fields", {}).get("message") == "strata is serving" for ln in lines)

    # A second broker on the same metrics port stops at once, saying what to do.
    r = subprocess.run(
        [str(STRATA_BIN), "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(mbroker.base_dir / "second"), "--metrics-listen", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stderr
    final = [ln for ln in r.stderr.splitlines() if ln.startswith("strata:")]
    assert final == [
        f"strata: cannot listen for metrics on 127.0.0.1:{port}: Address already in use (os error 98) "
        "(another process is using it; stop it or pass --metrics-listen HOST:PORT (or none))"
    ], r.stderr


def test_scaling_signals_are_rates_over_a_window(mbroker):
    """Issue 25: what an autoscaler scales on. CPU utilisation and the produce and fetch
    bytes per second are gauges averaged over a window of at least 10 s (zero until one
    has passed); the write buffer's bytes and cap are there too."""
    port = mbroker.metrics_port
    wait_ready(port)
    first = scrape(port)  # opens the first window
    t0 = time.monotonic()
    assert value(first, "strata_produce_bytes_per_second") == 0
    assert value(first, "strata_cpu_cores") >= 1
    cpu0 = value(first, "process_cpu_seconds_total")
    assert cpu0 > 0
    assert value(first, "strata_write_buffer_capacity_bytes") >= 1 << 20

    topic = "signals-" + uuid.uuid4().hex[:8]
    p = Producer({"bootstrap.servers": mbroker.bootstrap, "linger.ms": 20})
    n, size = 2000, 1000
    for i in range(n):
        p.produce(topic, b"x" * size, key=b"%d" % i)
        if i % 200 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": mbroker.bootstrap, "group.id": "signals",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    got = 0
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 20
        while got < n and time.monotonic() < deadline:
            got += sum(1 for m in c.consume(500, timeout=1) if m.error() is None)
    finally:
        c.close()
    assert got == n
    time.sleep(max(0.0, t0 + 10.5 - time.monotonic()))
    s = scrape(port)
    elapsed = time.monotonic() - t0
    # Everything produced and read fell inside the window, which lasted about `elapsed`.
    assert n * size / elapsed <= value(s, "strata_produce_bytes_per_second") <= n * (size + 100) / 10.0
    assert value(s, "strata_fetch_bytes_per_second") >= n * size / elapsed
    assert 0 < value(s, "strata_cpu_utilisation") <= 1
    assert value(s, "process_cpu_seconds_total") > cpu0
    assert value(s, "strata_write_buffer_bytes") == 0  # all of it acknowledged
