"""Named listeners (Kafka's listeners / advertised.listeners /
listener.security.protocol.map): a two-broker cluster whose brokers each have an INTERNAL
and an EXTERNAL listener, advertised under different host names. Metadata answers a
client with the addresses of the listener it came in on, for every broker of the
cluster (the other broker's come from the listeners it registered in the metadata)."""

import struct
import time

import pytest

import kwire
from cluster import Cluster
from conftest import free_port


def metadata_brokers(bootstrap: str) -> dict[int, tuple[str, int]]:
    """Metadata v1 (all topics): node id -> (host, port)."""
    body = kwire.roundtrip(bootstrap, 3, 1, kwire.metadata_v1_body([]))
    r = kwire.Reader(body)
    brokers = {}
    for _ in range(r.i32()):
        node, host, port = r.i32(), r.string(), r.i32()
        r.string()  # rack
        brokers[node] = (host, port)
    return brokers


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path / "cluster", voters=2)
    ports = {}
    for node in c.nodes.values():
        internal, external = node.kafka_port, free_port()
        ports[node.id] = (internal, external)
        node.listener_args = [
            "--listeners", f"INTERNAL://127.0.0.1:{internal},EXTERNAL://127.0.0.1:{external}",
            "--advertised-listeners", f"INTERNAL://127.0.0.1:{internal},EXTERNAL://localhost:{external}",
            "--listener-security-protocol-map", "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT",
        ]
    c.start_all()
    try:
        yield c, ports
    finally:
        c.close()


def test_metadata_answers_with_the_listener_the_client_used(cluster):
    c, ports = cluster
    internal = {n: ("127.0.0.1", p[0]) for n, p in ports.items()}
    external = {n: ("localhost", p[1]) for n, p in ports.items()}
    # Both brokers are in every answer once each has registered its listeners.
    deadline = time.monotonic() + 30
    while True:
        seen = {(n, kind): metadata_brokers(f"127.0.0.1:{ports[n][i]}")
                for n in ports for i, kind in enumerate(("internal", "external"))}
        if all(len(b) == 2 for b in seen.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    for n in ports:
        assert seen[(n, "internal")] == internal, seen
        assert seen[(n, "external")] == external, seen


def test_sasl_listener_needs_a_mechanism_and_a_bad_listener_is_one_clear_line(tmp_path):
    import subprocess
    from cluster import STRATA_BIN
    run = lambda *args: subprocess.run([str(STRATA_BIN), "serve", "--data-dir", str(tmp_path / "d"), *args],
                                       capture_output=True, text=True, timeout=30)
    p = run("--listeners", "INTERNAL://127.0.0.1:0")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "listener_security_protocol_map" in lines[0] and "NAME:PROTOCOL" in lines[0], p.stderr
    p = run("--listeners", "SASL_PLAINTEXT://127.0.0.1:0", "--sasl-enabled-mechanisms", "")
    assert p.returncode == 2 and "sasl_enabled_mechanisms" in p.stderr, p.stderr
    p = run("--listeners", "SSL://127.0.0.1:0")
    assert p.returncode == 2 and "tls_cert_file" in p.stderr, p.stderr


def test_users_and_acls_reach_every_broker(tmp_path):
    """SCRAM credentials and ACLs live in the metadata: a user created through one broker
    authenticates on the other, and an ACL created through one is enforced by both."""
    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                       NewTopic, ResourcePatternType, ResourceType, ScramCredentialInfo,
                                       ScramMechanism, UserScramCredentialUpsertion)

    c = Cluster(tmp_path / "cluster", voters=2)
    for node in c.nodes.values():
        node.listener_args = ["--listeners", f"SASL_PLAINTEXT://{node.bootstrap}"]
        node.env.update({"STRATA_ADMIN_USER": "admin", "STRATA_ADMIN_PASSWORD": "admin-secret"})
    c.start_all()
    try:
        def conf(node, user, password, **extra):
            return {"bootstrap.servers": c.nodes[node].bootstrap, "security.protocol": "SASL_PLAINTEXT",
                    "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": password,
                    **extra}

        admin1 = AdminClient(conf(1, "admin", "admin-secret"))
        admin2 = AdminClient(conf(2, "admin", "admin-secret"))
        for f in admin1.alter_user_scram_credentials([UserScramCredentialUpsertion(
                "alice", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"alice-secret")]).values():
            f.result(15)
        for f in admin1.create_topics([NewTopic("shared", 1, 1)]).values():
            f.result(15)
        p = Producer(conf(1, "admin", "admin-secret"))
        p.produce("shared", b"hello")
        assert p.flush(15) == 0

        def alice_reads(node) -> tuple[list[bytes], list]:
            consumer = Consumer(conf(node, "alice", "alice-secret", **{"group.id": f"g{node}",
                                                                       "enable.auto.commit": False}))
            got, errors = [], []
            try:
                consumer.assign([TopicPartition("shared", 0, 0)])
                deadline = time.monotonic() + 8
                while not got and time.monotonic() < deadline:
                    m = consumer.poll(0.5)
                    if m is None:
                        continue
                    if m.error():
                        errors.append(m.error().code())
                        if errors[-1] in (29, 30, 58):  # refused or not authenticated: decided
                            break
                    else:
                        got.append(m.value())
            except KafkaException as e:
                errors.append(e.args[0].code())
            finally:
                consumer.close()
            return got, errors

        # alice (created through broker 1) authenticates on broker 2, which refuses her:
        # no ACL yet, and a SASL listener closes resources without ACLs (TOPIC_ or
        # GROUP_AUTHORIZATION_FAILED, whichever request librdkafka makes first).
        deadline = time.monotonic() + 15
        while True:
            got, errors = alice_reads(2)
            if errors and errors[-1] in (29, 30) or time.monotonic() > deadline:
                break
        assert got == [] and errors and errors[-1] in (29, 30), (got, errors)

        # ACLs created through broker 2 open it on broker 1.
        acls = [AclBinding(ResourceType.TOPIC, "shared", ResourcePatternType.LITERAL, "User:alice", "*",
                           AclOperation.READ, AclPermissionType.ALLOW),
                AclBinding(ResourceType.GROUP, "*", ResourcePatternType.LITERAL, "User:alice", "*",
                           AclOperation.READ, AclPermissionType.ALLOW)]
        for f in admin2.create_acls(acls).values():
            assert f.result(15) is None
        deadline = time.monotonic() + 15
        while True:
            got, errors = alice_reads(1)
            if got or time.monotonic() > deadline:
                break
        assert got == [b"hello"], errors
        assert alice_reads(2)[0] == [b"hello"]
    finally:
        c.close()
