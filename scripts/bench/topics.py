"""The benchmark's topics (names, soak configs) and the admin calls around them:
CreateTopics, CreateAcls, watermark offsets."""

from __future__ import annotations

TOPIC = "bench"
TXN_TOPIC = "bench-txn"  # --txn: the transactional produce phase's own topic
IDEM_TOPIC = "bench-idempotent"  # --txn: the idempotent comparison phase's topic
# --soak-compact: keys per partition, every how many transactions one is aborted, and the
# topic's configs (segments roll and markers may go within a minute, so a 30-minute soak
# sees many cleaning passes).
SOAK_KEYS = 16
SOAK_ABORT_EVERY = 4
SOAK_COMPACT_CONFIG = {"cleanup.policy": "compact", "segment.ms": "60000", "delete.retention.ms": "60000",
                       "min.cleanable.dirty.ratio": "0.1"}


def create_topic(bootstrap: str, partitions: int, topic: str = TOPIC, config: dict | None = None) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    a = AdminClient({"bootstrap.servers": bootstrap})
    fs = a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})])
    for _t, f in fs.items():
        f.result(30)
    md = a.list_topics(topic, timeout=20)
    got = len(md.topics[topic].partitions)
    if got != partitions:
        raise RuntimeError(f"topic has {got} partitions, wanted {partitions}")


def create_acls(bootstrap: str, n: int, txn: bool = False) -> None:
    """`n` ACLs, so that every request pays for a real authorizer lookup: ALLOW ALL for
    everyone on the bench topic and on every group, and decoys (literal and prefixed
    topic ACLs of other principals; a quarter of the prefixes share the topic's first
    letters, so the prefix walk finds candidates that do not apply)."""
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                       ResourcePatternType, ResourceType)

    allow = [AclBinding(ResourceType.TOPIC, TOPIC, ResourcePatternType.LITERAL, "User:*", "*",
                        AclOperation.ALL, AclPermissionType.ALLOW),
             AclBinding(ResourceType.GROUP, "*", ResourcePatternType.LITERAL, "User:*", "*",
                        AclOperation.ALL, AclPermissionType.ALLOW)]
    if txn:  # --txn: its topic and the transactional ids
        allow += [AclBinding(ResourceType.TOPIC, t, ResourcePatternType.LITERAL, "User:*", "*",
                             AclOperation.ALL, AclPermissionType.ALLOW) for t in (TXN_TOPIC, IDEM_TOPIC)]
        allow += [AclBinding(ResourceType.TRANSACTIONAL_ID, "*", ResourcePatternType.LITERAL, "User:*", "*",
                             AclOperation.ALL, AclPermissionType.ALLOW)]
    decoys = []
    for i in range(max(0, n - len(allow))):
        if i % 2:
            name, pattern = f"decoy-{i}", ResourcePatternType.LITERAL
        else:
            name = (TOPIC[:3] if i % 4 == 0 else "dec") + f"-p{i}-"
            pattern = ResourcePatternType.PREFIXED
        decoys.append(AclBinding(ResourceType.TOPIC, name, pattern, f"User:user{i % 97}", "*",
                                 AclOperation.READ, AclPermissionType.ALLOW))
    a = AdminClient({"bootstrap.servers": bootstrap})
    bindings = allow + decoys
    for start in range(0, len(bindings), 1000):
        for _b, f in a.create_acls(bindings[start:start + 1000]).items():
            f.result(60)


def watermarks(bootstrap: str, partitions: int, topic: str = TOPIC) -> dict[int, tuple[int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-wm", "enable.auto.commit": False})
    out = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=20) for p in range(partitions)}
    c.close()
    return out
