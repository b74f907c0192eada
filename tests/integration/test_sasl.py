"""SASL authentication on the Kafka listeners: SCRAM-SHA-256/512 and PLAIN with kcat,
confluent-kafka, kafkajs and kafka-python over SASL_SSL and SASL_PLAINTEXT; SCRAM users
managed with AlterUserScramCredentials; wrong passwords, plaintext on the TLS port and
requests before authentication refused, with the broker serving on afterwards.

One broker for the module, with `allow_everyone_if_no_acl_found` so that only
authentication is tested here.  The CA and server certificate come from test_tls."""

import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
import kafka.errors
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import kwire
from conftest import REPO_ROOT, STRATA_BIN, Broker, _failed, free_port, supervise
from test_tls import api_versions, pki, produce_consume  # noqa: F401 (pki is a fixture)

ADMIN = "admin"
ADMIN_PASSWORD = "admin-secret"
SASL_AUTHENTICATION_FAILED = 58
API_SASL_HANDSHAKE = 17
API_SASL_AUTHENTICATE = 36
JS_DIR = REPO_ROOT / "tests" / "js"


class SaslBroker(Broker):
    """A broker with a SASL_PLAINTEXT listener on `port` (so `bootstrap` and the
    harness's readiness check use it) and a SASL_SSL listener on `ssl_port`."""

    def __init__(self, base_dir, pki_dir, extra_args=(), extra_env=None):
        self.ssl_port = free_port()
        args = [
            "--tls-cert-file", str(pki_dir / "server.pem"),
            "--tls-key-file", str(pki_dir / "server.key"),
            "--sasl-enabled-mechanisms", "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            "--allow-everyone-if-no-acl-found", "true",
            *extra_args,
        ]
        env = {"STRATA_ADMIN_USER": ADMIN, "STRATA_ADMIN_PASSWORD": ADMIN_PASSWORD, **(extra_env or {})}
        super().__init__(base_dir, extra_args=args, extra_env=env)

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    def listeners(self) -> str:
        return f"SASL_PLAINTEXT://{self.bootstrap},SASL_SSL://{self.ssl_bootstrap}"

    def command(self) -> list[str]:
        # --listeners replaces the harness's single --listen/--advertise pair.
        return [
            str(STRATA_BIN), "serve",
            "--listeners", self.listeners(),
            "--advertised-listeners", self.listeners(),
            "--data-dir", str(self.data_dir),
            "--store", self.store_url,
        ] + self.extra_args


def sasl_ssl(b, pki_dir, user, password, mechanism="SCRAM-SHA-512"):
    return {
        "bootstrap.servers": b.ssl_bootstrap, "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(pki_dir / "ca.pem"),
        "sasl.mechanisms": mechanism, "sasl.username": user, "sasl.password": password,
    }


def admin_client(b, pki_dir):
    return AdminClient(sasl_ssl(b, pki_dir, ADMIN, ADMIN_PASSWORD))


def wait_admin_ready(b, pki_dir, timeout=30.0):
    """The admin's credentials are written at first start, possibly just after the port
    opens: retry until a metadata request as the admin succeeds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin_client(b, pki_dir).list_topics(timeout=5)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def sasl_module_broker(request, tmp_path_factory, pki):  # noqa: F811
    run = supervise(request, SaslBroker(tmp_path_factory.mktemp("sasl") / "strata", pki))
    b = next(run)
    try:
        wait_admin_ready(b, pki)
    except BaseException:
        run.close()  # stops the broker
        raise
    yield b
    next(run, None)  # stops it, failing if it died or panicked


@pytest.fixture
def b(request, sasl_module_broker):
    """The module's broker, with its log tail printed when this test fails."""
    yield sasl_module_broker
    if _failed(request):
        print(f"\n--- strata log tail ({sasl_module_broker.log_path}) ---")
        print(sasl_module_broker.log_tail(150))


def upsert(b, pki_dir, user, password, mechanisms):
    admin = admin_client(b, pki_dir)
    alterations = [
        UserScramCredentialUpsertion(user, ScramCredentialInfo(m, 4096), password.encode())
        for m in mechanisms
    ]
    for fut in admin.alter_user_scram_credentials(alterations).values():
        fut.result(timeout=15)


def auth_errors(conf, seconds=15.0):
    """Errors a producer with `conf` reports until an authentication error arrives."""
    errors = []
    p = Producer({**conf, "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not any(e.code() == KafkaError._AUTHENTICATION for e in errors):
        p.poll(0.2)
    return errors


def assert_auth_fails(conf):
    errors = auth_errors(conf)
    auth = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
    assert auth, f"no authentication error, only {errors}"
    assert "Authentication failed" in auth[0].str(), auth[0].str()


# ------------------------------------------------------------------ raw frames
def sasl_handshake(s, mechanism, correlation_id=1):
    """SaslHandshake v1; returns (error_code, enabled mechanisms)."""
    s.sendall(kwire.request(API_SASL_HANDSHAKE, 1, correlation_id, kwire.kstring(mechanism)))
    cid, body = kwire.read_response(s)
    assert cid == correlation_id
    r = kwire.Reader(body)
    err = r.i16()
    return err, [r.string() for _ in range(r.i32())]


def read_uvarint(r: kwire.Reader) -> int:
    shift = n = 0
    while True:
        byte = r.data[r.pos]
        r.pos += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n
        shift += 7


def skip_tagged_fields(r: kwire.Reader) -> None:
    for _ in range(read_uvarint(r)):
        read_uvarint(r)  # tag
        r.pos += read_uvarint(r)


def sasl_authenticate_v2(s, auth_bytes, correlation_id=2):
    """SaslAuthenticate v2 (flexible: request header v2, response header v1); returns
    (error_code, error_message, auth_bytes)."""
    header = struct.pack(">hhi", API_SASL_AUTHENTICATE, 2, correlation_id) + kwire.kstring("strata-raw") + b"\x00"
    body = kwire.uvarint(len(auth_bytes) + 1) + auth_bytes + b"\x00"
    s.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    cid, rest = kwire.read_response(s)
    assert cid == correlation_id
    r = kwire.Reader(rest)
    skip_tagged_fields(r)
    err = r.i16()
    n = read_uvarint(r)
    message = None if n == 0 else r.data[r.pos:r.pos + n - 1].decode()
    r.pos += max(n - 1, 0)
    n = read_uvarint(r)
    token = r.data[r.pos:r.pos + n - 1]
    r.pos += max(n - 1, 0)
    sasl_authenticate_v2.session_lifetime_ms = r.i64()
    return err, message, token


# ------------------------------------------------------------------ tests
def test_kcat_scram_sha512_over_sasl_ssl(b, pki, unique_topic):  # noqa: F811
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    assert kcat, "kcat is not installed"
    x = ["-b", b.ssl_bootstrap, "-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=SCRAM-SHA-512",
         "-X", f"sasl.username={ADMIN}", "-X", f"sasl.password={ADMIN_PASSWORD}",
         "-X", f"ssl.ca.location={pki / 'ca.pem'}"]
    p = subprocess.run([kcat, *x, "-P", "-t", unique_topic], input="a\nb\nc\n", text=True,
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([kcat, *x, "-C", "-t", unique_topic, "-o", "beginning", "-e", "-f", "%s\n"],
                       text=True, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["a", "b", "c"]


def test_scram_users_managed_by_the_admin(b, pki, unique_topic):  # noqa: F811
    upsert(b, pki, "alice", "alice-pw", [ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512])

    admin = admin_client(b, pki)  # kept: a collected client cancels its futures
    described = admin.describe_user_scram_credentials(["alice"])
    desc = described["alice"].result(timeout=15)
    infos = {(i.mechanism, i.iterations) for i in desc.scram_credential_infos}
    assert infos == {(ScramMechanism.SCRAM_SHA_256, 4096), (ScramMechanism.SCRAM_SHA_512, 4096)}

    alice256 = sasl_ssl(b, pki, "alice", "alice-pw", "SCRAM-SHA-256")
    produce_consume(b, pki, unique_topic, **alice256)

    admin = admin_client(b, pki)
    deletion = UserScramCredentialDeletion("alice", ScramMechanism.SCRAM_SHA_256)
    for fut in admin.alter_user_scram_credentials([deletion]).values():
        fut.result(timeout=15)
    desc = admin.describe_user_scram_credentials(["alice"])["alice"].result(timeout=15)
    assert [i.mechanism for i in desc.scram_credential_infos] == [ScramMechanism.SCRAM_SHA_512]

    assert_auth_fails(alice256)
    produce_consume(b, pki, unique_topic + "-512", **sasl_ssl(b, pki, "alice", "alice-pw", "SCRAM-SHA-512"))


KAFKAJS_SCRIPT = r"""
const fs = require('fs');
const { Kafka, logLevel } = require('kafkajs');
const env = process.env;
(async () => {
  const kafka = new Kafka({
    clientId: 'strata-sasl-test',
    brokers: [env.BROKER],
    ssl: { ca: [fs.readFileSync(env.CA_FILE, 'utf-8')] },
    sasl: { mechanism: 'scram-sha-256', username: env.SASL_USER, password: env.SASL_PASSWORD },
    logLevel: logLevel.NOTHING,
  });
  const topic = env.TOPIC;
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 1 }], waitForLeaders: true });
  await admin.disconnect();
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({ topic, messages: ['m0', 'm1', 'm2'].map((value) => ({ value })) });
  await producer.disconnect();
  const consumer = kafka.consumer({ groupId: 'g-' + topic });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const got = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('timed out; got ' + JSON.stringify(got))), 30000);
    consumer.run({
      eachMessage: async ({ message }) => {
        got.push(message.value.toString());
        if (got.length === 3) { clearTimeout(timer); resolve(); }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  console.log('RESULT ' + JSON.stringify(got));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def test_kafkajs_scram_sha256_over_sasl_ssl(b, pki, unique_topic):  # noqa: F811
    node = shutil.which("node")
    assert node, "node is not installed"
    assert (JS_DIR / "node_modules" / "kafkajs").is_dir(), "kafkajs not installed: npm ci in tests/js"
    upsert(b, pki, "carol", "carol-pw", [ScramMechanism.SCRAM_SHA_256])
    env = {**os.environ, "BROKER": b.ssl_bootstrap, "CA_FILE": str(pki / "ca.pem"),
           "SASL_USER": "carol", "SASL_PASSWORD": "carol-pw", "TOPIC": unique_topic}
    try:
        proc = subprocess.run([node, "-e", KAFKAJS_SCRIPT], cwd=str(JS_DIR), env=env,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"kafkajs hung\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    out = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, out
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, out
    assert json.loads(lines[0][len("RESULT "):]) == ["m0", "m1", "m2"]


def test_kafka_python_plain_over_sasl_plaintext(b, pki, unique_topic):  # noqa: F811
    # PLAIN checks the password against the user's SCRAM credential (here SHA-256 only).
    upsert(b, pki, "dave", "dave-pw", [ScramMechanism.SCRAM_SHA_256])
    auth = dict(bootstrap_servers=b.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                sasl_plain_username="dave", sasl_plain_password="dave-pw")
    producer = KafkaProducer(**auth, linger_ms=5)
    try:
        for i in range(5):
            md = producer.send(unique_topic, value=f"p{i}".encode()).get(timeout=30)
            assert (md.partition, md.offset) == (0, i)
    finally:
        producer.close()
    consumer = KafkaConsumer(**auth, enable_auto_commit=False)
    try:
        tp = TopicPartition(unique_topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=1000).values():
                got += [m.value.decode() for m in msgs]
        assert got == [f"p{i}" for i in range(5)]
    finally:
        consumer.close()

    # The same user with a wrong password is refused: at construction (kafka-python
    # checks the broker version then) or at the first send.
    with pytest.raises(kafka.errors.KafkaError):
        bad = KafkaProducer(**{**auth, "sasl_plain_password": "nope"}, max_block_ms=5000)
        try:
            bad.send(unique_topic, value=b"x").get(timeout=10)
        finally:
            bad.close()


def test_wrong_password_is_refused_and_right_one_still_works(b, pki):  # noqa: F811
    assert_auth_fails(sasl_ssl(b, pki, ADMIN, "wrong-password", "SCRAM-SHA-512"))
    assert_auth_fails(sasl_ssl(b, pki, ADMIN, "wrong-password", "SCRAM-SHA-256"))
    assert_auth_fails(sasl_ssl(b, pki, "nobody", "whatever", "SCRAM-SHA-256"))
    assert admin_client(b, pki).list_topics(timeout=10).brokers

    # Raw: SaslHandshake v1 (PLAIN), then SaslAuthenticate v2 with a wrong password.
    with kwire.connect(b.bootstrap) as s:
        err, mechanisms = sasl_handshake(s, "PLAIN")
        assert err == 0
        assert set(mechanisms) == {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
        err, message, _ = sasl_authenticate_v2(s, f"\0{ADMIN}\0wrong-password".encode())
        assert err == SASL_AUTHENTICATION_FAILED
        assert message == "Authentication failed: Invalid username or password"
        assert kwire.wait_closed(s) == b""

    # And the right password on the same path succeeds.
    with kwire.connect(b.bootstrap) as s:
        assert sasl_handshake(s, "PLAIN")[0] == 0
        err, message, _ = sasl_authenticate_v2(s, f"\0{ADMIN}\0{ADMIN_PASSWORD}".encode())
        assert err == 0, message
        s.sendall(kwire.request(kwire.API_API_VERSIONS, 0, 9, b""))
        cid, body = kwire.read_response(s)
        assert cid == 9 and kwire.parse_api_versions_v0(body)["error_code"] == 0


def test_unknown_mechanism_is_refused(b):
    with kwire.connect(b.bootstrap) as s:
        err, mechanisms = sasl_handshake(s, "GSSAPI")
        assert err == 33  # UNSUPPORTED_SASL_MECHANISM
        assert "SCRAM-SHA-512" in mechanisms


def test_plaintext_request_on_sasl_ssl_port_is_closed(b, pki):  # noqa: F811
    with socket.create_connection(("127.0.0.1", b.ssl_port), timeout=5) as s:
        try:
            assert api_versions(s) is None
            assert kwire.wait_closed(s) == b""
        except ConnectionResetError:
            pass
    # The TLS port still serves: ApiVersions is allowed before authenticating.
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with socket.create_connection(("127.0.0.1", b.ssl_port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert api_versions(s) == 7
    assert admin_client(b, pki).list_topics(timeout=10).brokers


def test_metadata_before_authenticating_is_closed(b):
    # ApiVersions is answered before the SASL handshake ...
    with kwire.connect(b.bootstrap) as s:
        s.sendall(kwire.request(kwire.API_API_VERSIONS, 0, 5, b""))
        cid, body = kwire.read_response(s)
        assert cid == 5 and kwire.parse_api_versions_v0(body)["error_code"] == 0
        # ... but any other request closes the connection without an answer.
        s.sendall(kwire.request(kwire.API_METADATA, 1, 6, kwire.metadata_v1_body(None)))
        assert kwire.wait_closed(s) == b""
    # Also as the very first request.
    with kwire.connect(b.bootstrap) as s:
        s.sendall(kwire.request(kwire.API_METADATA, 1, 6, kwire.metadata_v1_body(None)))
        assert kwire.wait_closed(s) == b""


def test_reauthentication_kip_368(request, tmp_path, pki, unique_topic):  # noqa: F811
    """Sessions last --connections-max-reauth-ms: SaslAuthenticate says so, librdkafka
    re-authenticates on its connections and keeps producing, and a raw client that does
    not re-authenticate has its connection closed at its next request."""
    lifetime_ms = 1500
    sb = SaslBroker(tmp_path / "strata", pki, extra_args=["--connections-max-reauth-ms", str(lifetime_ms)],
                    extra_env={"RUST_LOG": "info,strata::server::sasl=debug"})
    for b in supervise(request, sb):
        wait_admin_ready(b, pki)
        with kwire.connect(b.bootstrap) as s:
            err, mechanisms = sasl_handshake(s, "PLAIN")
            assert err == 0, mechanisms
            err, message, _ = sasl_authenticate_v2(s, f"\0{ADMIN}\0{ADMIN_PASSWORD}".encode())
            assert err == 0, message
            assert sasl_authenticate_v2.session_lifetime_ms == lifetime_ms
            s.sendall(kwire.request(kwire.API_METADATA, 1, 6, kwire.metadata_v1_body([])))
            assert kwire.read_response(s)[0] == 6  # within the session: answered
            time.sleep(lifetime_ms / 1000 + 0.5)
            s.sendall(kwire.request(kwire.API_METADATA, 1, 7, kwire.metadata_v1_body([])))
            assert kwire.wait_closed(s) == b""  # expired: closed, unanswered

        conf = {**sasl_ssl(b, pki, ADMIN, ADMIN_PASSWORD, "SCRAM-SHA-256"), "linger.ms": 0}
        p = Producer(conf)
        errors, delivered = [], []
        deadline = time.monotonic() + 4 * lifetime_ms / 1000
        i = 0
        while time.monotonic() < deadline:
            p.produce(unique_topic, f"r{i}".encode(),
                      on_delivery=lambda err, msg: (errors if err else delivered).append(err or msg.offset()))
            p.flush(10)
            i += 1
            time.sleep(0.2)
        assert errors == [] and delivered == list(range(i)), (errors, delivered)
        # Every connection of the producer re-authenticated at least once on its way.
        assert b.log_text().count("SASL re-authenticated") >= 2, b.log_tail(60)


# ------------------------------------------------------------------ OAUTHBEARER
def _b64url(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class JwtKey:
    """An EC P-256 key that signs ES256 JWTs by hand, and its JWK."""

    def __init__(self, kid):
        from cryptography.hazmat.primitives.asymmetric import ec
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwk(self):
        numbers = self.key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                "x": _b64url(numbers.x.to_bytes(32, "big")), "y": _b64url(numbers.y.to_bytes(32, "big"))}

    def token(self, sub, exp, **claims):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        payload = {"sub": sub, "exp": int(exp), "iat": int(time.time()), **claims}
        signing_input = (_b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(payload).encode())).encode()
        r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return signing_input.decode() + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def oauth_conf(b, token_fn, expiry_s=None):
    """A SASL_PLAINTEXT OAUTHBEARER client whose oauth_cb returns token_fn()'s JWT; librdkafka
    is told `expiry_s` from now (it refuses a token it already knows to be expired)."""
    def oauth_cb(_config):
        return token_fn(), time.time() + (expiry_s or 300), "ignored-by-the-broker"
    return {"bootstrap.servers": b.bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "OAUTHBEARER", "oauth_cb": oauth_cb}


def metadata_ok(conf):
    p = Producer(conf)
    p.poll(0.5)  # serves oauth_cb
    return bool(p.list_topics(timeout=15).brokers)


def test_oauthbearer_jwt_against_jwks(request, tmp_path, pki, unique_topic):  # noqa: F811
    """OAUTHBEARER with a JWKS file: confluent-kafka's oauth_cb tokens produce and consume
    as User:<sub>; a token from another key, an expired one and a wrong audience are
    refused; SaslAuthenticate's session lifetime is the token's remaining life."""
    from confluent_kafka import Consumer

    key, stranger = JwtKey("k1"), JwtKey("k1")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.jwk()]}))
    sb = SaslBroker(tmp_path / "strata", pki, extra_args=[
        "--sasl-oauthbearer-jwks-file", str(jwks),
        "--sasl-oauthbearer-expected-audience", "kafka",
    ])
    i = sb.extra_args.index("--sasl-enabled-mechanisms")
    sb.extra_args[i + 1] = "OAUTHBEARER,SCRAM-SHA-512"
    for b in supervise(request, sb):
        wait_admin_ready(b, pki)

        # Raw: the session lifetime is what is left of the token.
        with kwire.connect(b.bootstrap) as s:
            err, mechanisms = sasl_handshake(s, "OAUTHBEARER")
            assert err == 0 and set(mechanisms) == {"OAUTHBEARER", "SCRAM-SHA-512"}, mechanisms
            jwt = key.token("alice", time.time() + 120, aud="kafka")
            err, message, _ = sasl_authenticate_v2(s, f"n,,\x01auth=Bearer {jwt}\x01\x01".encode())
            assert err == 0, message
            assert 100_000 < sasl_authenticate_v2.session_lifetime_ms <= 120_000
        with kwire.connect(b.bootstrap) as s:
            assert sasl_handshake(s, "OAUTHBEARER")[0] == 0
            jwt = key.token("alice", time.time() + 120, aud="other")
            err, message, _ = sasl_authenticate_v2(s, f"n,,\x01auth=Bearer {jwt}\x01\x01".encode())
            assert err == SASL_AUTHENTICATION_FAILED and "audience" in message, message
            assert kwire.wait_closed(s) == b""

        good = oauth_conf(b, lambda: key.token("alice", time.time() + 300, aud=["kafka", "x"]))
        p = Producer({**good, "linger.ms": 0})
        delivered = []
        for n in range(5):
            p.produce(unique_topic, f"m{n}".encode(), on_delivery=lambda err, msg: delivered.append(err or msg.offset()))
        assert p.flush(30) == 0
        assert delivered == list(range(5)), delivered

        c = Consumer({**good, "group.id": "oauth-g", "auto.offset.reset": "earliest"})
        try:
            c.subscribe([unique_topic])
            got = []
            deadline = time.monotonic() + 30
            while len(got) < 5 and time.monotonic() < deadline:
                msg = c.poll(0.5)
                if msg is not None and msg.error() is None:
                    got.append(msg.value())
            assert got == [f"m{n}".encode() for n in range(5)], got
        finally:
            c.close()

        # Signed by another key (with the same kid), and expired beyond the clock skew.
        assert_auth_fails(oauth_conf(b, lambda: stranger.token("alice", time.time() + 300, aud="kafka")))
        assert_auth_fails(oauth_conf(b, lambda: key.token("alice", time.time() - 120, aud="kafka")))
        # The broker still serves the good token afterwards.
        assert metadata_ok(good)

        # Key rotation without a restart: the stranger's key is now the one.
        jwks.write_text(json.dumps({"keys": [stranger.jwk(), {"kty": "oct", "k": "AA"}]}))
        time.sleep(1.5)
        rotated = oauth_conf(b, lambda: stranger.token("bob", time.time() + 300, aud="kafka"))
        assert metadata_ok(rotated)
        assert_auth_fails(good)
