"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the YAML
parses, the services are wired together (bucket before brokers, the brokers' Raft and
Kafka addresses consistent), and every broker flag is one the binary accepts.  When a
`docker` CLI with compose is present, `docker compose config` validates it as well."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster import REPO_ROOT, STRATA_BIN

COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
BROKERS = ["strata1", "strata2", "strata3"]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def flags(command) -> dict[str, str]:
    assert isinstance(command, list) and command[0] == "serve", command
    out = {}
    for arg in command[1:]:
        m = re.fullmatch(r"--([a-z-]+)=(.+)", arg)
        assert m, f"broker argument {arg!r} is not --flag=value"
        assert m.group(1) not in out, f"--{m.group(1)} given twice"
        out[m.group(1)] = m.group(2)
    return out


def host_port(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def test_services_are_wired(compose):
    services = compose["services"]
    assert {"minio", "createbucket", *BROKERS} <= set(services)

    minio = services["minio"]
    assert minio["image"].startswith("minio/minio")
    user, password = minio["environment"]["MINIO_ROOT_USER"], minio["environment"]["MINIO_ROOT_PASSWORD"]
    assert "healthcheck" in minio

    mc = services["createbucket"]
    assert mc["image"].startswith("minio/mc")
    assert mc["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(mc["command"]) if isinstance(mc["command"], list) else mc["command"]
    m = re.search(r"mc alias set (\S+) http://minio:9000 (\S+) (\S+)", script)
    assert m and (m.group(2), m.group(3)) == (user, password), script
    bucket = re.search(rf"mc mb (?:--ignore-existing )?{m.group(1)}/(\S+)", script).group(1)

    parsed = {name: flags(services[name]["command"]) for name in BROKERS}
    controllers = {f["controllers"] for f in parsed.values()}
    assert len(controllers) == 1, "every broker must name the same voters"
    voters = dict(e.split("@") for e in controllers.pop().split(","))
    assert sorted(voters) == ["1", "2", "3"]
    published = set()
    for name, f in parsed.items():
        svc = services[name]
        # Raft: its own entry in --controllers, a name the other containers resolve.
        assert voters[f["node-id"]] == f["raft-listen"], name
        assert host_port(f["raft-listen"])[0] == name == svc.get("hostname", name)
        # Kafka: listen on all interfaces, advertise what the host reaches (published port).
        lhost, lport = host_port(f["listen"])
        ahost, aport = host_port(f["advertise"])
        assert lhost == "0.0.0.0" and ahost == "localhost" and lport == aport, name
        assert f"{aport}:{lport}" in [str(p) for p in svc["ports"]], name
        assert aport not in published
        published.add(aport)
        # The shared bucket on MinIO, with MinIO's credentials.
        assert f["store"].startswith(f"s3://{bucket}/"), f["store"]
        env = svc["environment"]
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (user, password)
        assert env["AWS_REGION"] == "us-east-1"
        assert svc["depends_on"]["createbucket"]["condition"] == "service_completed_successfully"
        assert svc["volumes"][0].endswith(":" + f["data-dir"])
        assert svc["build"] == "." and (REPO_ROOT / svc["build"] / "Dockerfile").exists()
    assert len({f["node-id"] for f in parsed.values()}) == 3
    assert len({f["store"] for f in parsed.values()}) == 1
    # Raft ports are not published: only the brokers talk Raft.
    for name in BROKERS:
        assert all(":9093" not in str(p) for p in services[name]["ports"])


def test_broker_flags_exist(compose):
    """Every flag the compose file passes is one `strata serve` accepts."""
    assert STRATA_BIN.exists(), f"build the broker first: {STRATA_BIN}"
    help_text = subprocess.run([str(STRATA_BIN), "serve", "--help"], capture_output=True,
                               text=True, check=True).stdout
    known = set(re.findall(r"--([a-z][a-z-]*)", help_text))
    for name in BROKERS:
        used = set(flags(compose["services"][name]["command"]))
        assert used <= known, f"{name}: unknown flags {used - known}"


def test_dockerfile_is_multi_stage():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert stages[0][0].startswith("rust:1") and stages[0][1]
    assert stages[-1][0] == "debian:bookworm-slim"
    # The build stage is bookworm too, so the binary's glibc matches the runtime.
    assert "bookworm" in stages[0][0]
    assert "cargo build --release" in text
    assert re.search(rf"COPY --from={stages[0][1]} \S*strata", text)
    assert re.search(r'ENTRYPOINT \["strata"\]', text)


def test_docker_compose_config():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose plugin not installed")
    proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
