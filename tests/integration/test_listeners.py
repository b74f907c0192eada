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
