"""Kafka ACLs with real clients: a broker with a SASL_PLAINTEXT listener (SCRAM-SHA-256 and
PLAIN), an admin super user from STRATA_ADMIN_USER / STRATA_ADMIN_PASSWORD who creates the
users (AlterUserScramCredentials) and the ACLs (CreateAcls), and ordinary users who are
allowed exactly what the ACLs say: confluent-kafka (librdkafka) and kafkajs.

Broker interface used (each flag also a STRATA_* variable and TOML key):
`--listeners SASL_PLAINTEXT://127.0.0.1:PORT[,PLAINTEXT://127.0.0.1:PORT2]`,
`--sasl-enabled-mechanisms`, `--super-users 'User:admin;User:ops'`,
`--allow-everyone-if-no-acl-found BOOL` (default false once a SASL listener exists).

Every user's password is its name followed by "-secret"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from conftest import REPO_ROOT, Broker, free_port, supervise

ADMIN = "admin"
TOPIC_AUTH = KafkaError.TOPIC_AUTHORIZATION_FAILED  # 29
GROUP_AUTH = KafkaError.GROUP_AUTHORIZATION_FAILED  # 30
CLUSTER_AUTH = KafkaError.CLUSTER_AUTHORIZATION_FAILED  # 31
JS_DIR = REPO_ROOT / "tests" / "js"
# How long an ACL change may take to reach the authorizer (it goes through the metadata log).
PROPAGATION = 15.0


def password(user: str) -> str:
    return f"{user}-secret"


class AclBroker(Broker):
    """A broker whose listeners come from --listeners: SASL_PLAINTEXT on `port` (the port
    the harness waits for) and, if `plaintext_port` is set, PLAINTEXT on that port. Each
    listener advertises its own address."""

    def __init__(self, base_dir, plaintext_port: int | None = None, **kw):
        super().__init__(base_dir, **kw)
        self.plaintext_port = plaintext_port

    @property
    def plaintext_bootstrap(self) -> str:
        return f"127.0.0.1:{self.plaintext_port}"

    def command(self) -> list[str]:
        listeners = f"SASL_PLAINTEXT://{self.bootstrap}"
        if self.plaintext_port is not None:
            listeners += f",PLAINTEXT://{self.plaintext_bootstrap}"
        cmd = super().command()
        # The harness's --listen/--advertise name one plaintext address: replaced here.
        for flag in ("--listen", "--advertise"):
            i = cmd.index(flag)
            del cmd[i:i + 2]
        return cmd + ["--listeners", listeners, "--sasl-enabled-mechanisms", "PLAIN,SCRAM-SHA-256"]


def start_acl_broker(request, tmp_path, extra_args=(), plaintext=False):
    b = AclBroker(
        tmp_path / "strata",
        plaintext_port=free_port() if plaintext else None,
        extra_args=list(extra_args),
        extra_env={"STRATA_ADMIN_USER": ADMIN, "STRATA_ADMIN_PASSWORD": password(ADMIN)},
    )
    return supervise(request, b)


@pytest.fixture
def acl_broker(request, tmp_path):
    """The default broker: one SASL_PLAINTEXT listener, no --allow-everyone-if-no-acl-found
    (so false: the tests' refusals of resources without ACLs check that default)."""
    yield from start_acl_broker(request, tmp_path)


# ---------------------------------------------------------------- client helpers
def sasl_conf(b: Broker, user: str, mechanism: str = "SCRAM-SHA-256", **extra) -> dict:
    return {
        "bootstrap.servers": b.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password(user),
        **extra,
    }


def admin_client(b: Broker, user: str = ADMIN) -> AdminClient:
    return AdminClient(sasl_conf(b, user))


def wait_all(futures: dict, timeout: float = 15) -> dict:
    return {k: f.result(timeout=timeout) for k, f in futures.items()}


def create_users(b: Broker, *users: str) -> None:
    admin = admin_client(b)
    upserts = [
        UserScramCredentialUpsertion(u, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
                                     password(u).encode())
        for u in users
    ]
    wait_all(admin.alter_user_scram_credentials(upserts))
    # The user can log in (SCRAM credentials go through the metadata log as well).
    for u in users:
        deadline = time.monotonic() + PROPAGATION
        while True:
            try:
                admin_client(b, u).list_topics(timeout=5)
                break
            except KafkaException:
                assert time.monotonic() < deadline, f"user {u} cannot log in"
                time.sleep(0.3)


def create_topics(b: Broker, *topics: str, partitions: int = 1) -> None:
    admin = admin_client(b)
    wait_all(admin.create_topics([NewTopic(t, partitions, 1) for t in topics]))
    deadline = time.monotonic() + PROPAGATION
    while not set(topics) <= set(admin.list_topics(timeout=5).topics):
        assert time.monotonic() < deadline, "created topics never appeared in the metadata"
        time.sleep(0.2)


def produce(conf: dict, topic: str, values: list[bytes], timeout: float = 20) -> list:
    """Produces the values; returns one entry per value: None (delivered) or an error code."""
    outcome: list = []
    p = Producer({**conf, "message.timeout.ms": 10000, "linger.ms": 5, "log_level": 0})
    for v in values:
        try:
            p.produce(topic, v, on_delivery=lambda err, _m: outcome.append(None if err is None else err.code()))
        except KafkaException as e:  # librdkafka refuses locally once the topic is known to fail
            outcome.append(e.args[0].code())
    p.flush(timeout)
    return outcome


def admin_produce(b: Broker, topic: str, n: int) -> list[bytes]:
    values = [f"{topic}-{i}".encode() for i in range(n)]
    assert produce(sasl_conf(b, ADMIN, **{"acks": "all"}), topic, values) == [None] * n
    return values


def consume(conf: dict, topic: str, group: str, n: int | None = None, timeout: float = 25,
            stop_on: set[int] = frozenset()) -> tuple[list[bytes], list[int]]:
    """Subscribes in `group` and polls: returns (values, error codes) once n values came, an
    error code in stop_on came, or the timeout passed."""
    c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": True, "session.timeout.ms": 6000, "log_level": 0})
    c.subscribe([topic])
    got: list[bytes] = []
    errors: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                errors.append(m.error().code())
                if m.error().code() in stop_on:
                    break
                continue
            got.append(m.value())
            if n is not None and len(got) >= n:
                break
    finally:
        c.close()
    return got, errors


def refused_consume(conf: dict, topic: str, group: str, expected: set[int]) -> list[int]:
    got, errors = consume(conf, topic, group, timeout=25, stop_on=expected)
    assert got == [], f"consumed {len(got)} records from {topic} in {group}"
    assert set(errors) & expected, f"expected one of {expected}, got errors {errors}"
    return errors


def topic_error(admin: AdminClient, topic: str) -> int | None:
    """The error code of `topic` in a Metadata response naming it (None: no error)."""
    md = admin.list_topics(topic=topic, timeout=10)
    t = md.topics.get(topic)
    assert t is not None, f"{topic} missing from a metadata response naming it"
    return None if t.error is None else t.error.code()


def acl(restype, name, pattern, principal, op, perm, host="*") -> AclBinding:
    return AclBinding(restype, name, pattern, principal, host, op, perm)


def key(a: AclBinding) -> tuple:
    return (a.restype, a.name, a.resource_pattern_type, a.principal, a.host, a.operation, a.permission_type)


def create_acls(b: Broker, bindings: list[AclBinding]) -> None:
    admin = admin_client(b)  # kept: a collected client cancels its futures
    results = wait_all(admin.create_acls(bindings))
    assert list(results.values()) == [None] * len(bindings)


def eventually(check, what: str, timeout: float = PROPAGATION):
    """Retries `check` (an assertion) until it passes: ACL changes reach the authorizer
    through the metadata log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise AssertionError(f"never true within {timeout}s: {what}") from None
            time.sleep(0.3)


ALICE_ACLS = [
    acl(ResourceType.TOPIC, "a", ResourcePatternType.LITERAL, "User:alice", AclOperation.READ, AclPermissionType.ALLOW),
    acl(ResourceType.GROUP, "g", ResourcePatternType.LITERAL, "User:alice", AclOperation.READ, AclPermissionType.ALLOW),
]


def setup_alice(b: Broker) -> list[bytes]:
    create_users(b, "alice", "bob")
    create_topics(b, "a", "b")
    values = admin_produce(b, "a", 5)
    admin_produce(b, "b", 5)
    create_acls(b, ALICE_ACLS)
    # alice may describe `a` (READ implies DESCRIBE) once the ACLs are in force.
    eventually(lambda: topic_error(admin_client(b, "alice"), "a") is None, "alice sees topic a")
    return values


# ----------------------------------------------------------------------- tests
def test_alice_gets_exactly_her_acls(acl_broker):
    b = acl_broker
    values = setup_alice(b)
    alice = sasl_conf(b, "alice")

    # Consuming `a` in group `g` works.
    got, errors = consume(alice, "a", "g", n=len(values))
    assert got == values, errors

    # Producing to `a`: READ only.
    outcome = produce(alice, "a", [b"x", b"y"])
    assert outcome and all(code == TOPIC_AUTH for code in outcome), outcome

    # `b` has no ACL at all (and allow.everyone.if.no.acl.found is false by default).
    refused_consume(alice, "b", "g", {TOPIC_AUTH})

    # Group `h` has no ACL.
    refused_consume(alice, "a", "h", {GROUP_AUTH})

    # CreateTopics: neither Cluster CREATE nor Topic CREATE.
    alice_admin = admin_client(b, "alice")  # kept: a collected client cancels its futures
    fs = alice_admin.create_topics([NewTopic("c", 1, 1)])
    with pytest.raises(KafkaException) as e:
        fs["c"].result(timeout=15)
    assert e.value.args[0].code() in (TOPIC_AUTH, CLUSTER_AUTH), e.value
    assert "c" not in admin_client(b).list_topics(timeout=10).topics

    # Metadata: alice sees `a` and not `b`; the admin sees both.
    alice_topics = set(admin_client(b, "alice").list_topics(timeout=10).topics)
    assert "a" in alice_topics and "b" not in alice_topics, alice_topics
    assert {"a", "b"} <= set(admin_client(b).list_topics(timeout=10).topics)
    assert topic_error(admin_client(b, "alice"), "b") == TOPIC_AUTH



def test_deny_beats_allow_and_prefixed_acls(acl_broker):
    b = acl_broker
    create_users(b, "bob")
    create_topics(b, "logs-app", "logs-secret", "other")
    admin_produce(b, "logs-secret", 3)
    create_acls(b, [
        acl(ResourceType.TOPIC, "logs-", ResourcePatternType.PREFIXED, "User:bob", AclOperation.ALL, AclPermissionType.ALLOW),
        acl(ResourceType.TOPIC, "logs-secret", ResourcePatternType.LITERAL, "User:bob", AclOperation.WRITE, AclPermissionType.DENY),
    ])
    bob = sasl_conf(b, "bob")
    eventually(lambda: topic_error(admin_client(b, "bob"), "logs-app") is None, "bob sees logs-app")

    # The PREFIXED ALLOW covers logs-app ...
    assert produce(bob, "logs-app", [b"1", b"2", b"3"]) == [None] * 3
    # ... but not `other`.
    outcome = produce(bob, "other", [b"1"])
    assert outcome == [TOPIC_AUTH], outcome
    assert topic_error(admin_client(b, "bob"), "other") == TOPIC_AUTH
    # The literal DENY WRITE beats the prefixed ALLOW ALL on logs-secret ...
    outcome = produce(bob, "logs-secret", [b"1", b"2"])
    assert outcome and all(code == TOPIC_AUTH for code in outcome), outcome
    # ... for WRITE only: DESCRIBE is still allowed by the ALLOW ALL.
    assert topic_error(admin_client(b, "bob"), "logs-secret") is None
    # The admin's view: bob's records landed in logs-app only.
    got, _ = consume(sasl_conf(b, ADMIN), "logs-app", "admin-check", n=3)
    assert got == [b"1", b"2", b"3"]
    got, _ = consume(sasl_conf(b, ADMIN), "logs-secret", "admin-check", n=3, timeout=10)
    assert got == [f"logs-secret-{i}".encode() for i in range(3)]


def test_describe_and_delete_acls(acl_broker):
    b = acl_broker
    setup_alice(b)
    extra_alice = acl(ResourceType.TOPIC, "x-", ResourcePatternType.PREFIXED, "User:alice",
                      AclOperation.WRITE, AclPermissionType.ALLOW)
    bob_acl = acl(ResourceType.TOPIC, "a", ResourcePatternType.LITERAL, "User:bob",
                  AclOperation.DESCRIBE, AclPermissionType.DENY, host="127.0.0.1")
    create_acls(b, [extra_alice, bob_acl])
    admin = admin_client(b)
    alice_created = {key(a) for a in ALICE_ACLS + [extra_alice]}

    alice_filter = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:alice", None,
                                    AclOperation.ANY, AclPermissionType.ANY)
    assert {key(a) for a in admin.describe_acls(alice_filter).result(timeout=10)} == alice_created
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    assert {key(a) for a in admin.describe_acls(everything).result(timeout=10)} == alice_created | {key(bob_acl)}
    # MATCH: every binding that applies to topic `x-logs` (the PREFIXED `x-`), and for topic
    # `a` the two LITERAL ones.
    match_x = AclBindingFilter(ResourceType.TOPIC, "x-logs", ResourcePatternType.MATCH, None, None,
                               AclOperation.ANY, AclPermissionType.ANY)
    assert [key(a) for a in admin.describe_acls(match_x).result(timeout=10)] == [key(extra_alice)]
    match_a = AclBindingFilter(ResourceType.TOPIC, "a", ResourcePatternType.MATCH, None, None,
                               AclOperation.ANY, AclPermissionType.ANY)
    assert {key(a) for a in admin.describe_acls(match_a).result(timeout=10)} == {key(ALICE_ACLS[0]), key(bob_acl)}
    # An exact pattern type with a name: only that pattern type and that exact name.
    prefixed_x = AclBindingFilter(ResourceType.TOPIC, "x-logs", ResourcePatternType.PREFIXED, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    assert admin.describe_acls(prefixed_x).result(timeout=10) == []
    deny_only = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                 AclOperation.ANY, AclPermissionType.DENY)
    assert [key(a) for a in admin.describe_acls(deny_only).result(timeout=10)] == [key(bob_acl)]
    # Ordinary users may not describe ACLs (Cluster DESCRIBE): the broker answers
    # CLUSTER_AUTHORIZATION_FAILED, which librdkafka surfaces as an error or (some
    # versions) as an empty result; either way none of the existing bindings leaks.
    alice_admin = admin_client(b, "alice")
    try:
        seen = alice_admin.describe_acls(everything).result(timeout=10)
    except KafkaException as e:
        assert e.args[0].code() == CLUSTER_AUTH, e
        seen = []
    assert seen == [], seen

    # alice consumes `a` before the deletion ...
    got, errors = consume(sasl_conf(b, "alice"), "a", "g", n=5)
    assert len(got) == 5, errors

    deleted = wait_all(admin.delete_acls([alice_filter]))
    assert {key(a) for a in deleted[alice_filter]} == alice_created
    assert [key(a) for a in admin.describe_acls(everything).result(timeout=10)] == [key(bob_acl)]
    # Deleting again deletes nothing.
    assert wait_all(admin.delete_acls([alice_filter]))[alice_filter] == []

    # ... and is refused afterwards. (bob's ACL on `a` is still there, so `a` has an ACL.)
    eventually(lambda: topic_error(admin_client(b, "alice"), "a") == TOPIC_AUTH, "alice refused on a")
    refused_consume(sasl_conf(b, "alice"), "a", "g", {TOPIC_AUTH, GROUP_AUTH})
    assert "a" not in admin_client(b, "alice").list_topics(timeout=10).topics


KAFKAJS_SCRIPT = r"""
// Driven by tests/integration/test_acls.py: argv = broker, JSON options.
const path = require('path')
const { Kafka, logLevel, AclResourceTypes, AclOperationTypes, AclPermissionTypes, ResourcePatternTypes } =
  require(path.join(process.env.STRATA_JS_DIR, 'node_modules', 'kafkajs'))

const broker = process.argv[2]
const opts = JSON.parse(process.argv[3])
const client = (user) => new Kafka({
  clientId: `strata-acl-${user}`,
  brokers: [broker],
  logLevel: logLevel.NOTHING,
  retry: { retries: 2, initialRetryTime: 200 },
  sasl: { mechanism: 'scram-sha-256', username: user, password: `${user}-secret` }
})
const result = {}

function errType (e) {
  // KafkaJSProtocolError carries `type`; retries wrap it (cause / originalError).
  let x = e
  for (let depth = 0; x && depth < 10; depth++, x = x.cause || x.originalError) {
    if (x.type) return x.type
  }
  const m = String(e && e.message)
  if (m.includes('Not authorized to access topics')) return 'TOPIC_AUTHORIZATION_FAILED'
  if (m.includes('Not authorized to access group')) return 'GROUP_AUTHORIZATION_FAILED'
  if (m.includes('Cluster authorization failed')) return 'CLUSTER_AUTHORIZATION_FAILED'
  return `${e && e.name}: ${m}`
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function consumeRefused (kafka, topic, groupId) {
  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500, retry: { retries: 0 } })
  let got = 0
  try {
    await consumer.connect()
    await consumer.subscribe({ topics: [topic], fromBeginning: true })
    const crashed = new Promise((resolve) => consumer.on(consumer.events.CRASH, (ev) => resolve(ev.payload.error)))
    await consumer.run({ eachMessage: async () => { got += 1 } })
    const err = await Promise.race([crashed, sleep(20000).then(() => null)])
    return { got, error: err ? errType(err) : 'no error' }
  } catch (e) {
    return { got, error: errType(e) }
  } finally {
    await consumer.disconnect().catch(() => {})
  }
}

async function main () {
  const admin = client('admin').admin()
  await admin.connect()
  const acl = [
    { resourceType: AclResourceTypes.TOPIC, resourceName: 'a', resourcePatternType: ResourcePatternTypes.LITERAL,
      principal: 'User:alice', host: '*', operation: AclOperationTypes.READ, permissionType: AclPermissionTypes.ALLOW },
    { resourceType: AclResourceTypes.GROUP, resourceName: 'g', resourcePatternType: ResourcePatternTypes.LITERAL,
      principal: 'User:alice', host: '*', operation: AclOperationTypes.READ, permissionType: AclPermissionTypes.ALLOW }
  ]
  result.created = await admin.createAcls({ acl })
  const filter = {
    resourceType: AclResourceTypes.ANY, resourcePatternType: ResourcePatternTypes.ANY,
    principal: 'User:alice', operation: AclOperationTypes.ANY, permissionType: AclPermissionTypes.ANY
  }
  const described = await admin.describeAcls(filter)
  result.described = described.resources.flatMap((r) => r.acls.map((a) => ({
    resourceType: r.resourceType, resourceName: r.resourceName, resourcePatternType: r.resourcePatternType, ...a
  })))

  // Give the ACLs time to reach the authorizer: poll alice's metadata for `a`.
  const alice = client('alice')
  const aliceAdmin = alice.admin()
  await aliceAdmin.connect()
  result.alice_sees_a = false
  for (let i = 0; i < 50 && !result.alice_sees_a; i++) {
    try {
      const md = await aliceAdmin.fetchTopicMetadata({ topics: ['a'] })
      result.alice_sees_a = md.topics.length === 1 && md.topics[0].name === 'a'
    } catch (e) {
      await sleep(300)
    }
  }
  try {
    await aliceAdmin.fetchTopicMetadata({ topics: ['b'] })
    result.alice_metadata_b = 'no error'
  } catch (e) {
    result.alice_metadata_b = errType(e)
  }
  await aliceAdmin.disconnect()

  result.consume_b = await consumeRefused(alice, 'b', 'g')

  const producer = alice.producer({ retry: { retries: 0 } })
  await producer.connect()
  try {
    await producer.send({ topic: 'a', acks: -1, messages: [{ value: 'from-alice' }] })
    result.produce_a = 'no error'
  } catch (e) {
    result.produce_a = errType(e)
  }
  await producer.disconnect()

  // DENY beats ALLOW, and PREFIXED matches: bob may do anything on `logs-*` but not
  // write `logs-secret`, and nothing on `b`.
  await admin.createAcls({
    acl: [
      { resourceType: AclResourceTypes.TOPIC, resourceName: 'logs-', resourcePatternType: ResourcePatternTypes.PREFIXED,
        principal: 'User:bob', host: '*', operation: AclOperationTypes.ALL, permissionType: AclPermissionTypes.ALLOW },
      { resourceType: AclResourceTypes.TOPIC, resourceName: 'logs-secret', resourcePatternType: ResourcePatternTypes.LITERAL,
        principal: 'User:bob', host: '*', operation: AclOperationTypes.WRITE, permissionType: AclPermissionTypes.DENY }
    ]
  })
  const bob = client('bob').producer({ retry: { retries: 0 } })
  await bob.connect()
  result.bob = {}
  for (const topic of ['logs-app', 'logs-secret', 'b']) {
    let outcome = 'no ACL seen yet'
    for (let i = 0; i < 30; i++) {
      try {
        await bob.send({ topic, acks: -1, messages: [{ value: 'from-bob' }] })
        outcome = 'ok'
      } catch (e) {
        outcome = errType(e)
      }
      // Until the ACLs are applied bob is refused everywhere: wait for logs-app to open.
      if (topic !== 'logs-app' || outcome === 'ok') break
      await sleep(300)
    }
    result.bob[topic] = outcome
  }
  await bob.disconnect()

  const deleted = await admin.deleteAcls({ filters: [filter] })
  result.deleted = deleted.filterResponses.map((f) => ({
    errorCode: f.errorCode,
    matching: f.matchingAcls.map(({ resourceType, resourceName, resourcePatternType, principal, host, operation, permissionType }) =>
      ({ resourceType, resourceName, resourcePatternType, principal, host, operation, permissionType }))
  }))
  const after = await admin.describeAcls(filter)
  result.after_delete = after.resources.length
  await admin.disconnect()
}

main().then(
  () => { console.log('RESULT ' + JSON.stringify(result)); process.exit(0) },
  (e) => { console.error(e); console.log('RESULT ' + JSON.stringify({ ...result, fatal: errType(e) })); process.exit(1) }
)
"""


def test_kafkajs_acls(acl_broker, tmp_path):
    b = acl_broker
    node = shutil.which("node")
    assert node, "node is not installed"
    assert (JS_DIR / "node_modules" / "kafkajs").is_dir(), \
        "kafkajs not installed: run scripts/test.sh (npm ci in tests/js)"
    create_users(b, "alice", "bob")
    create_topics(b, "a", "b", "logs-app", "logs-secret")
    admin_produce(b, "a", 2)
    admin_produce(b, "b", 2)
    script = tmp_path / "acls.js"
    script.write_text(KAFKAJS_SCRIPT)
    try:
        proc = subprocess.run(
            [node, str(script), b.bootstrap, json.dumps({})],
            cwd=str(JS_DIR), capture_output=True, text=True, timeout=150,
            env={**os.environ, "STRATA_JS_DIR": str(JS_DIR)},
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"acls.js hung\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    out = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, out
    result = json.loads(lines[0][len("RESULT "):])
    assert proc.returncode == 0, out

    # Wire codes: TOPIC 2, GROUP 3, LITERAL 3, READ 3, ALLOW 3.
    expected = [
        {"resourceType": 2, "resourceName": "a", "resourcePatternType": 3,
         "principal": "User:alice", "host": "*", "operation": 3, "permissionType": 3},
        {"resourceType": 3, "resourceName": "g", "resourcePatternType": 3,
         "principal": "User:alice", "host": "*", "operation": 3, "permissionType": 3},
    ]

    def norm(acls):
        return sorted(acls, key=lambda a: (a["resourceType"], a["resourceName"]))

    assert "fatal" not in result, out
    assert result["created"] is True, out
    assert norm(result["described"]) == expected, out
    assert result["alice_sees_a"] is True, out
    assert result["alice_metadata_b"] == "TOPIC_AUTHORIZATION_FAILED", out
    assert result["consume_b"] == {"got": 0, "error": "TOPIC_AUTHORIZATION_FAILED"}, out
    assert result["produce_a"] == "TOPIC_AUTHORIZATION_FAILED", out
    assert result["bob"] == {"logs-app": "ok", "logs-secret": "TOPIC_AUTHORIZATION_FAILED",
                             "b": "TOPIC_AUTHORIZATION_FAILED"}, out
    assert len(result["deleted"]) == 1 and result["deleted"][0]["errorCode"] == 0, out
    assert norm(result["deleted"][0]["matching"]) == expected, out
    assert result["after_delete"] == 0, out
    # The deletion really happened on the broker: confluent-kafka sees only bob's ACLs.
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    admin = admin_client(b)
    left = admin.describe_acls(everything).result(timeout=10)
    assert sorted((a.name, a.resource_pattern_type, a.principal, a.operation, a.permission_type) for a in left) == [
        ("logs-", ResourcePatternType.PREFIXED, "User:bob", AclOperation.ALL, AclPermissionType.ALLOW),
        ("logs-secret", ResourcePatternType.LITERAL, "User:bob", AclOperation.WRITE, AclPermissionType.DENY),
    ], left


def test_super_user_and_anonymous(request, tmp_path):
    args = ["--super-users", "User:admin;User:ops", "--allow-everyone-if-no-acl-found", "false"]
    for b in start_acl_broker(request, tmp_path, extra_args=args, plaintext=True):
        create_users(b, "ops", "carol")
        ops = sasl_conf(b, "ops")
        ops_admin = admin_client(b, "ops")

        # ops, with no ACL at all: creates a topic, produces, consumes in a group, describes
        # configs and ACLs, creates and deletes an ACL.
        wait_all(ops_admin.create_topics([NewTopic("ops-topic", 1, 1)]))
        eventually(lambda: topic_error(ops_admin, "ops-topic") is None, "ops-topic exists")
        assert produce(ops, "ops-topic", [b"o1", b"o2"]) == [None, None]
        got, errors = consume(ops, "ops-topic", "ops-group", n=2)
        assert got == [b"o1", b"o2"], errors
        everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                      AclOperation.ANY, AclPermissionType.ANY)
        assert ops_admin.describe_acls(everything).result(timeout=10) == []
        # carol, an ordinary user with no ACL, gets none of it.
        carol_admin = admin_client(b, "carol")
        assert topic_error(carol_admin, "ops-topic") == TOPIC_AUTH
        fs = carol_admin.create_topics([NewTopic("carol-topic", 1, 1)])
        with pytest.raises(KafkaException) as e:
            fs["carol-topic"].result(timeout=15)
        assert e.value.args[0].code() in (TOPIC_AUTH, CLUSTER_AUTH), e.value

        # ANONYMOUS on the PLAINTEXT listener: the listener answers (Metadata works and
        # names the topic) but the topic is refused.
        anon = {"bootstrap.servers": b.plaintext_bootstrap, "security.protocol": "PLAINTEXT"}
        anon_admin = AdminClient(anon)
        assert topic_error(anon_admin, "ops-topic") == TOPIC_AUTH
        assert "ops-topic" not in anon_admin.list_topics(timeout=10).topics
        refused_consume(anon, "ops-topic", "anon-group", {TOPIC_AUTH, GROUP_AUTH})
        outcome = produce(anon, "ops-topic", [b"anon"])
        assert outcome == [TOPIC_AUTH], outcome

        # With an ACL for User:ANONYMOUS the same client reads: the refusal above was the
        # authorizer's, not a broken listener.
        wait_all(ops_admin.create_acls([
            acl(ResourceType.TOPIC, "ops-topic", ResourcePatternType.LITERAL, "User:ANONYMOUS",
                AclOperation.READ, AclPermissionType.ALLOW),
            acl(ResourceType.GROUP, "anon-", ResourcePatternType.PREFIXED, "User:ANONYMOUS",
                AclOperation.READ, AclPermissionType.ALLOW),
        ]))
        eventually(lambda: topic_error(anon_admin, "ops-topic") is None, "anonymous sees ops-topic")
        got, errors = consume(anon, "ops-topic", "anon-group-2", n=2)
        assert got == [b"o1", b"o2"], errors


def test_consumer_protocol_sees_only_topics_it_may_describe(acl_broker):
    """KIP-848 under ACLs, as Kafka: a pattern subscription matches only the topics the
    member may describe, and a subscription naming one it may not is refused with
    TOPIC_AUTHORIZATION_FAILED."""
    b = acl_broker
    create_users(b, "carol")
    create_topics(b, "kip-open", "kip-secret", partitions=2)
    opened = admin_produce(b, "kip-open", 3)
    admin_produce(b, "kip-secret", 3)
    create_acls(b, [
        acl(ResourceType.TOPIC, "kip-open", ResourcePatternType.LITERAL, "User:carol",
            AclOperation.READ, AclPermissionType.ALLOW),
        acl(ResourceType.GROUP, "kip-", ResourcePatternType.PREFIXED, "User:carol",
            AclOperation.READ, AclPermissionType.ALLOW),
    ])
    eventually(lambda: topic_error(admin_client(b, "carol"), "kip-open") is None, "carol sees kip-open")
    conf = sasl_conf(b, "carol", **{"group.protocol": "consumer", "auto.offset.reset": "earliest"})
    c = Consumer({**conf, "group.id": "kip-pattern"})
    c.subscribe(["^kip-.*"])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < len(opened):
        assert time.monotonic() < deadline, f"read {got}"
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value())
    assert sorted(got) == sorted(opened)
    assert {tp.topic for tp in c.assignment()} == {"kip-open"}, c.assignment()
    c.close()

    named = Consumer({**conf, "group.id": "kip-named"})
    named.subscribe(["kip-secret"])
    errors = set()
    deadline = time.monotonic() + 15
    while TOPIC_AUTH not in errors and time.monotonic() < deadline:
        m = named.poll(0.5)
        if m is not None and m.error() is not None:
            errors.add(m.error().code())
        assert m is None or m.error() is not None, "read a topic it may not describe"
    named.close()
    assert TOPIC_AUTH in errors, errors


def test_a_groups_own_configs_need_the_groups_config_acls(acl_broker):
    """GROUP config resources (KIP-848) are authorized on the group, as Kafka does:
    ALTER_CONFIGS to change them, DESCRIBE_CONFIGS to read them, else
    GROUP_AUTHORIZATION_FAILED."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
    b = acl_broker
    create_users(b, "dave")
    create_acls(b, [
        acl(ResourceType.GROUP, "dave-", ResourcePatternType.PREFIXED, "User:dave",
            AclOperation.ALTER_CONFIGS, AclPermissionType.ALLOW),
        acl(ResourceType.GROUP, "dave-", ResourcePatternType.PREFIXED, "User:dave",
            AclOperation.DESCRIBE_CONFIGS, AclPermissionType.ALLOW),
    ])
    admin = admin_client(b, "dave")

    def alter(group: str):
        entry = ConfigEntry("consumer.session.timeout.ms", "50000",
                            incremental_operation=AlterConfigOpType.SET)
        [f] = admin.incremental_alter_configs(
            [ConfigResource(ResourceType.GROUP, group, incremental_configs=[entry])]).values()
        try:
            f.result(timeout=15)
            return None
        except KafkaException as e:
            return e.args[0].code()

    def describe(group: str):
        [f] = admin.describe_configs([ConfigResource(ResourceType.GROUP, group)]).values()
        try:
            return {n: c.value for n, c in f.result(timeout=15).items()}
        except KafkaException as e:
            return e.args[0].code()

    def may_alter_own():
        assert alter("dave-g") is None

    eventually(may_alter_own, "dave may alter dave-g's configs")
    assert describe("dave-g")["consumer.session.timeout.ms"] == "50000"
    assert alter("other-g") == GROUP_AUTH
    assert describe("other-g") == GROUP_AUTH
