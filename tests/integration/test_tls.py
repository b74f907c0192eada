"""TLS on the Kafka listener (security protocol SSL): confluent-kafka and kcat over TLS,
plaintext refused, client certificates (tls_client_auth=required) and their principal,
expired and untrusted client certificates refused,
a certificate renewed on disk served without a restart, and bad files at start-up.

A throwaway CA and certificates are made with the openssl command-line tool."""

import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from conftest import STRATA_BIN, Broker, supervise

EXT_SERVER = "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
EXT_CLIENT = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"


def openssl(*args, cwd):
    assert shutil.which("openssl"), "the openssl command-line tool is needed"
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def new_key_csr(d, name, subject):
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)


def sign(d, name, serial, ext, out=None):
    (d / f"{name}.ext").write_text(ext)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", str(serial), "-days", "1", "-extfile", f"{name}.ext",
            "-out", out or f"{name}.pem", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=Strata Test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign", cwd=d)
    new_key_csr(d, "server", "/CN=localhost")
    sign(d, "server", 1001, EXT_SERVER)
    new_key_csr(d, "client", "/O=Strata/OU=test/CN=client1")
    sign(d, "client", 2001, EXT_CLIENT)
    return d


def tls_args(pki, *extra):
    return ["--tls-cert-file", str(pki / "server.pem"), "--tls-key-file", str(pki / "server.key"), *extra]


def api_versions_frame():
    header = struct.pack(">hhih", 18, 0, 7, 4) + b"test"  # ApiVersions v0, correlation 7
    return struct.pack(">i", len(header)) + header


def api_versions(sock):
    """Sends ApiVersions and returns the response's correlation id (None if closed)."""
    sock.sendall(api_versions_frame())
    head = sock.recv(8)
    if len(head) < 8:
        return None
    return struct.unpack(">ii", head)[1]


def served_serial(b, pki):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with socket.create_connection(("127.0.0.1", b.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert api_versions(s) == 7
            return int(s.getpeercert()["serialNumber"], 16)


def ssl_conf(b, pki, **extra):
    return {"bootstrap.servers": b.bootstrap, "security.protocol": "SSL",
            "ssl.ca.location": str(pki / "ca.pem"), **extra}


def produce_consume(b, pki, topic, n=20, **extra):
    p = Producer({**ssl_conf(b, pki, **extra), "acks": "all", "linger.ms": 5})
    for i in range(n):
        p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert p.flush(15) == 0
    c = Consumer({**ssl_conf(b, pki, **extra), "group.id": f"g-{topic}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.monotonic() + 15
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value().decode())
    c.close()
    assert got == [f"v{i}" for i in range(n)]


@pytest.fixture
def tls_broker(request, tmp_path, pki):
    args = tls_args(pki, "--frame-read-timeout-ms", "1000")
    yield from supervise(request, Broker(tmp_path / "strata", extra_args=args))


def test_clients_over_tls_and_plaintext_refused(tls_broker, pki, unique_topic):
    b = tls_broker
    produce_consume(b, pki, unique_topic)

    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    assert kcat, "kcat is not installed"
    ssl_x = ["-b", b.bootstrap, "-X", "security.protocol=ssl", "-X", f"ssl.ca.location={pki / 'ca.pem'}"]
    topic = unique_topic + "-kcat"
    p = subprocess.run([kcat, *ssl_x, "-P", "-t", topic], input="a\nb\nc\n", text=True,
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([kcat, *ssl_x, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%s\n"],
                       text=True, capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["a", "b", "c"]

    # DescribeConfigs names the listener's security protocol.
    admin = AdminClient(ssl_conf(b, pki))
    resource = ConfigResource(ConfigResource.Type.BROKER, "1")
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["advertised.listeners"].value == f"SSL://{b.bootstrap}"

    # A client that never starts its handshake is closed after frame_read_timeout_ms.
    with socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
        started = time.monotonic()
        assert s.recv(1) == b""
        assert 0.8 < time.monotonic() - started < 4

    # A plaintext Kafka request gets no Kafka answer: the broker wants a TLS handshake.
    with socket.create_connection(("127.0.0.1", b.port), timeout=5) as s:
        try:
            assert api_versions(s) is None
        except ConnectionResetError:
            pass


def test_certificate_renewed_on_disk_is_served_without_restart(tls_broker, pki):
    b = tls_broker
    assert served_serial(b, pki) == 1001
    # The renewal goes to a copy of the files so that the module's certificate stays.
    sign(pki, "server", 1002, EXT_SERVER, out="renewed.pem")
    (pki / "server.pem").rename(pki / "original.pem")
    (pki / "renewed.pem").rename(pki / "server.pem")
    try:
        deadline = time.monotonic() + 5
        while served_serial(b, pki) != 1002:
            assert time.monotonic() < deadline, "the renewed certificate was never served"
            time.sleep(0.3)
        # A broken file keeps the certificate in use, with a warning.
        (pki / "server.pem").write_text("not a certificate\n")
        time.sleep(1.2)
        assert served_serial(b, pki) == 1002
        assert "still serving the previous certificate" in b.log_text()
    finally:
        (pki / "original.pem").replace(pki / "server.pem")


def refused_client_certs(pki, d):
    """A client certificate that expired yesterday (signed by the test CA) and one signed
    by another CA; both with one key."""
    new_key_csr(d, "bad", "/O=Strata/OU=test/CN=mallory")
    (d / "bad.ext").write_text(EXT_CLIENT)
    openssl("x509", "-req", "-in", "bad.csr", "-CA", str(pki / "ca.pem"), "-CAkey", str(pki / "ca.key"),
            "-set_serial", "3001", "-days", "-1", "-extfile", "bad.ext", "-out", "expired.pem", cwd=d)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "1", "-subj", "/CN=Rogue CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=keyCertSign,cRLSign", cwd=d)
    openssl("x509", "-req", "-in", "bad.csr", "-CA", "rogue.pem", "-CAkey", "rogue.key",
            "-set_serial", "3002", "-days", "1", "-extfile", "bad.ext", "-out", "untrusted.pem", cwd=d)
    return {"expired": d / "expired.pem", "untrusted": d / "untrusted.pem", "key": d / "bad.key"}


def test_client_certificate_required(request, tmp_path, pki, unique_topic):
    (tmp_path / "certs").mkdir()
    bad_certs = refused_client_certs(pki, tmp_path / "certs")
    b = Broker(tmp_path / "strata",
               # With client certificates, resources without ACLs are closed by default;
               # the certificate's principal, as a super user, opens them (so the
               # authorizer sees exactly Kafka's form of the subject).
               extra_args=tls_args(pki, "--tls-client-auth", "required", "--tls-ca-file", str(pki / "ca.pem"),
                                   "--super-users", "User:CN=client1,OU=test,O=Strata"),
               extra_env={"RUST_LOG": "info,strata::server=debug"})
    for b in supervise(request, b):
        # Without a certificate: refused (in TLS 1.3 the alert comes after the handshake).
        ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        with socket.create_connection(("127.0.0.1", b.port), timeout=5) as raw:
            with pytest.raises((ssl.SSLError, ConnectionResetError, AssertionError)):
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    assert api_versions(s) == 7
        # So is a Kafka client without one.
        errors = []
        p = Producer({**ssl_conf(b, pki), "message.timeout.ms": 1500, "log_level": 0})
        p.produce(unique_topic, b"x", on_delivery=lambda err, _msg: errors.append(err))
        p.flush(5)
        assert len(errors) == 1 and errors[0] is not None, errors

        # Nor a client whose certificate is expired, or signed by a CA the broker does
        # not trust.
        for name in ("expired", "untrusted"):
            bad = {"ssl.certificate.location": str(bad_certs[name]), "ssl.key.location": str(bad_certs["key"])}
            errors = []
            p = Producer({**ssl_conf(b, pki), **bad, "message.timeout.ms": 1500, "log_level": 0})
            p.produce(unique_topic, b"x", on_delivery=lambda err, _msg: errors.append(err))
            p.flush(5)
            assert len(errors) == 1 and errors[0] is not None, (name, errors)

        cert = {"ssl.certificate.location": str(pki / "client.pem"), "ssl.key.location": str(pki / "client.key")}
        produce_consume(b, pki, unique_topic, **cert)
        # The principal is Kafka's: the subject DN, last RDN first.
        assert "User:CN=client1,OU=test,O=Strata" in b.log_text()


def test_bad_certificate_files_stop_start_up(tmp_path, pki):
    def serve(*args):
        return subprocess.run([str(STRATA_BIN), "serve", "--data-dir", str(tmp_path / "data"),
                               "--listen", "127.0.0.1:0", "--advertise", "127.0.0.1:1",
                               "--metrics-listen", "none", *args],
                              capture_output=True, text=True, timeout=20)

    p = serve("--tls-cert-file", str(tmp_path / "missing.pem"), "--tls-key-file", str(pki / "server.key"))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("strata: cannot read tls_cert_file"), p.stderr
    # The client's key does not belong to the server's certificate.
    p = serve("--tls-cert-file", str(pki / "server.pem"), "--tls-key-file", str(pki / "client.key"))
    assert p.returncode == 2 and "tls_key_file" in p.stderr, p.stderr
    p = serve("--tls-cert-file", str(pki / "server.pem"))
    assert p.returncode == 2 and "tls_key_file" in p.stderr, p.stderr
