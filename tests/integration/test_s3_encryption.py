"""S3 server-side encryption (`--s3-sse`): every object the broker writes carries the
encryption S3 is asked for.  The S3 tests run only in the STRATA_TEST_STORE=s3 pass
(against moto's server, which records the SSE headers of each PUT and answers them in
HeadObject); the start-up refusal needs no store and runs in the local pass."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import STRATA_BIN, S3_ENV, TEST_STORE, Broker, free_port, supervise

s3_only = pytest.mark.skipif(TEST_STORE != "s3", reason="runs in the STRATA_TEST_STORE=s3 pass")

SEGMENTS = "strata/segments/"  # the broker's store URL is s3://BUCKET/strata


@pytest.fixture
def s3broker(request, tmp_path):
    """An s3 broker that the test starts itself (after setting extra_args)."""
    yield from supervise(request, Broker(tmp_path / "strata", store="s3"), start=False)


def produce_and_read_back(b: Broker, topic: str, n: int = 20) -> None:
    """Produces n records (acks=all) and reads them back: written and served encrypted."""
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    for i in range(n):
        p.produce(topic, value=f"secret-{i}".encode())
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": f"g-{topic}",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got, deadline = [], time.monotonic() + 15
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
    finally:
        c.close()
    assert got == [f"secret-{i}".encode() for i in range(n)]


def head_every_object(b: Broker) -> dict[str, dict]:
    """HeadObject of every object in the broker's bucket, once a segment is there."""
    deadline = time.monotonic() + 10
    while not b.s3.list_keys(b.bucket, SEGMENTS) and time.monotonic() < deadline:
        time.sleep(0.2)
    keys = b.s3.list_keys(b.bucket)
    assert any(k.startswith(SEGMENTS) for k in keys), f"no segment object in {sorted(keys)}"
    return {k: b.s3.client.head_object(Bucket=b.bucket, Key=k) for k in keys}


@s3_only
def test_sse_kms_with_key_id_on_every_object(s3broker):
    b = s3broker
    # moto serves KMS on the same endpoint; a real key, as an operator would pass.
    import boto3

    kms = boto3.client(
        "kms", endpoint_url=b.s3.endpoint,
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_ENV["AWS_REGION"],
    )
    key_id = kms.create_key(Description="strata-sse-test")["KeyMetadata"]["KeyId"]
    b.extra_args += ["--s3-sse", "kms", "--s3-sse-kms-key-id", key_id]
    b.start()
    produce_and_read_back(b, "sse-kms")
    heads = head_every_object(b)
    for key, head in heads.items():
        assert head.get("ServerSideEncryption") == "aws:kms", (key, head)
        # S3 answers the key's ARN, moto the id as sent: either ends with the id.
        assert head.get("SSEKMSKeyId", "").endswith(key_id), (key, head)
    print(f"\n{len(heads)} objects, all aws:kms with key {key_id}")


@s3_only
def test_sse_s3_aes256_on_every_object(s3broker):
    b = s3broker
    b.extra_args += ["--s3-sse", "s3"]
    b.start()
    produce_and_read_back(b, "sse-s3")
    heads = head_every_object(b)
    for key, head in heads.items():
        assert head.get("ServerSideEncryption") == "AES256", (key, head)
        assert "SSEKMSKeyId" not in head, (key, head)
    print(f"\n{len(heads)} objects, all AES256")


# Store-independent (refused before the store is opened): the local pass only, like the
# modules in conftest.STORE_INDEPENDENT.
@pytest.mark.skipif(TEST_STORE != "local", reason="store-independent: runs in the local pass only")
@pytest.mark.parametrize("args, setting", [
    (["--s3-sse", "kms"], "s3_sse_kms_key_id"),
    (["--s3-sse", "s3", "--s3-sse-kms-key-id", "k-1"], "s3_sse_kms_key_id"),
    (["--s3-sse", "sse-c"], "s3_sse"),
])
def test_bad_sse_settings_stop_startup_in_one_line(tmp_path, args, setting):
    """Refused before the store is touched, so an s3:// URL needs no server here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STRATA_"))}
    env.update(S3_ENV, NO_COLOR="1", STRATA_METRICS_LISTEN="none")
    r = subprocess.run(
        [str(STRATA_BIN), "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(tmp_path / "data"), "--store", "s3://strata-sse-test/strata", *args],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    final = [ln for ln in r.stderr.splitlines() if ln.startswith("strata:")]
    assert len(final) == 1, r.stderr
    assert setting in final[0] and "is not valid" in final[0], final[0]
    assert "panicked" not in r.stderr
