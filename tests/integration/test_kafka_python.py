"""kafka-python (pure-Python client, its own protocol code): admin, produce, group consume."""

import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from cluster import broker_of

TOPIC = "kp-events"
PARTS = 2
N = 100


def test_kafka_python_admin(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="kp-admin",
                             request_timeout_ms=30000)
    try:
        admin.create_topics([NewTopic(name=TOPIC, num_partitions=PARTS, replication_factor=1)])
        assert TOPIC in admin.list_topics()
        desc = admin.describe_topics([TOPIC])
        assert len(desc) == 1, desc
        t = desc[0]
        assert t.get("name", t.get("topic")) == TOPIC, t
        assert t["error_code"] == 0, t
        parts = t["partitions"]
        assert sorted(p.get("partition_index", p.get("partition")) for p in parts) == list(range(PARTS)), parts
        assert all(broker_of(p.get("leader_id", p.get("leader"))) == 1 for p in parts), parts

        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, TOPIC)],
                                         config_filter="all")
        topic_cfg = configs["topic"][TOPIC]
        assert topic_cfg, f"DescribeConfigs returned no configs for {TOPIC}: {configs}"
        assert topic_cfg["cleanup.policy"]["value"] == "delete", topic_cfg.get("cleanup.policy")
    finally:
        admin.close()


def test_kafka_python_produce_consume_group(broker):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    admin.create_topics([NewTopic(name=TOPIC, num_partitions=PARTS, replication_factor=1)])
    admin.close()

    # kafka-python's defaults (3.x: an idempotent producer, through InitProducerId).
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    futures = [
        (f"k{i % 10}", f"v{i}", producer.send(TOPIC, key=f"k{i % 10}".encode(), value=f"v{i}".encode()))
        for i in range(N)
    ]
    producer.flush(timeout=30)
    produced = {}
    for k, v, fut in futures:
        md = fut.get(timeout=30)
        assert md.topic == TOPIC
        produced[(md.partition, md.offset)] = (k, v)
    producer.close()
    assert len(produced) == N

    consumer = KafkaConsumer(
        TOPIC,
        bootstrap_servers=broker.bootstrap,
        group_id="kp-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    consumed = {}
    deadline = time.monotonic() + 90
    while len(consumed) < N:
        assert time.monotonic() < deadline, f"consumed {len(consumed)}/{N}"
        for tp, msgs in consumer.poll(timeout_ms=1000).items():
            for m in msgs:
                key = (m.partition, m.offset)
                assert key not in consumed, f"duplicate {key}"
                consumed[key] = (m.key.decode(), m.value.decode())
    assert consumed == produced

    consumer.commit()
    ends = consumer.end_offsets([TopicPartition(TOPIC, p) for p in range(PARTS)])
    for p in range(PARTS):
        assert consumer.committed(TopicPartition(TOPIC, p)) == ends[TopicPartition(TOPIC, p)]
    assert sum(ends.values()) == N
    consumer.close()
