"""kcat (librdkafka CLI) against Strata: metadata, produce, consume, group consume."""

import json
import shutil
import subprocess
import threading
import time
from collections import defaultdict

import pytest

N = 1000
FMT = "%p\t%o\t%k\t%s\n"  # partition, offset, key, value


def kcat_bin():
    exe = shutil.which("kcat") or shutil.which("kafkacat")
    assert exe, "kcat is not installed (scripts/test.sh installs it with apt)"
    return exe


def run(args, input_text=None, timeout=60):
    try:
        p = subprocess.run(args, input=input_text, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{args} timed out after {timeout}s\nstdout tail:\n{(e.stdout or '')[-2000:]}\nstderr:\n{e.stderr}")
    return p


def produced_lines():
    # keyed lines: 50 distinct keys, value carries a global sequence number
    return [(f"k{i % 50}", f"v{i}") for i in range(N)]


def parse_consumed(text):
    rows = []
    for line in text.splitlines():
        if not line:
            continue
        p, o, k, v = line.split("\t")
        rows.append((int(p), int(o), k, v))
    return rows


def check_rows(rows, expected):
    assert len(rows) == N, f"expected {N} messages, got {len(rows)}"
    assert sorted((k, v) for _, _, k, v in rows) == sorted(expected)
    by_part = defaultdict(list)
    for p, o, k, v in rows:
        by_part[p].append((o, k, v))
    key_part = {}
    for p, msgs in by_part.items():
        offsets = [o for o, _, _ in msgs]
        # per-partition order as delivered: offsets 0..n-1, contiguous, increasing
        assert offsets == list(range(len(msgs))), f"partition {p} offsets not contiguous from 0: {offsets[:20]}..."
        last_seq = {}
        for o, k, v in msgs:
            seq = int(v[1:])
            # a key maps to one partition, and its values arrive in produce order
            assert key_part.setdefault(k, p) == p, f"key {k} seen on partitions {key_part[k]} and {p}"
            assert seq > last_seq.get(k, -1), f"partition {p}: key {k} out of order ({seq} after {last_seq[k]})"
            last_seq[k] = seq
    return by_part


def produce(kcat, bootstrap, topic, lines):
    data = "".join(f"{k}:{v}\n" for k, v in lines)
    p = run([kcat, "-b", bootstrap, "-t", topic, "-P", "-K:", "-X", "acks=all"], input_text=data)
    assert p.returncode == 0, f"kcat -P failed ({p.returncode}): {p.stderr}"


def test_kcat_metadata_lists_broker(broker):
    kcat = kcat_bin()
    p = run([kcat, "-b", broker.bootstrap, "-L", "-J"])
    assert p.returncode == 0, p.stderr
    meta = json.loads(p.stdout)
    brokers = meta["brokers"]
    assert [b["id"] for b in brokers] == [1]
    assert brokers[0]["name"] == broker.bootstrap
    assert meta["controllerid"] == 1

    # plain-text listing too (what a person runs)
    p = run([kcat, "-b", broker.bootstrap, "-L"])
    assert p.returncode == 0, p.stderr
    assert "1 brokers:" in p.stdout, p.stdout
    assert f"broker 1 at {broker.bootstrap}" in p.stdout, p.stdout


def test_kcat_produce_consume_1000(broker):
    kcat = kcat_bin()
    topic = "kcat-keyed"
    lines = produced_lines()
    produce(kcat, broker.bootstrap, topic, lines)  # topic is auto-created

    p = run([kcat, "-b", broker.bootstrap, "-L", "-J", "-t", topic])
    assert p.returncode == 0, p.stderr
    topics = {t["topic"]: t for t in json.loads(p.stdout)["topics"]}
    assert topic in topics and not topics[topic].get("error"), p.stdout
    nparts = len(topics[topic]["partitions"])
    assert nparts >= 1

    p = run([kcat, "-b", broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", FMT])
    assert p.returncode == 0, p.stderr
    rows = parse_consumed(p.stdout)
    check_rows(rows, lines)

    # a second full read gives the identical result (reads are repeatable)
    p2 = run([kcat, "-b", broker.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-q", "-f", FMT])
    assert p2.returncode == 0, p2.stderr
    assert sorted(parse_consumed(p2.stdout)) == sorted(rows)


def test_kcat_group_consume(broker, tmp_path):
    kcat = kcat_bin()
    topic = "kcat-group"
    lines = produced_lines()
    produce(kcat, broker.bootstrap, topic, lines)

    # Balanced (group) consumer. -e makes kcat exit once all assigned partitions hit EOF
    # (kcat >= 1.6); in case it doesn't, read until N messages then terminate it.
    args = [kcat, "-b", broker.bootstrap, "-G", "kcat-group-1", "-o", "beginning", "-e", "-q",
            "-f", FMT, "-X", "auto.offset.reset=earliest", topic]
    errf = open(tmp_path / "kcat-group.stderr", "w+")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errf, text=True)
    out_lines = []
    got_all = threading.Event()

    def reader():
        for line in proc.stdout:  # keep reading to EOF so duplicates are noticed
            out_lines.append(line)
            if len(out_lines) >= N:
                got_all.set()
        got_all.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    got_all.wait(timeout=90)
    time.sleep(1.0)  # let any extra (duplicate) messages arrive
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    t.join(timeout=10)
    errf.seek(0)
    err = errf.read()
    errf.close()
    rows = parse_consumed("".join(out_lines))
    assert len(rows) == N, f"group consumer got {len(rows)}/{N} messages; stderr:\n{err[-3000:]}"
    check_rows(rows, lines)
