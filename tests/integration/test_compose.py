"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the YAML
parses, the services are wired together (bucket before brokers, the brokers' Raft and
Kafka addresses consistent), every broker flag is one the binary accepts, Prometheus
scrapes every broker's metrics port (deploy/prometheus.yml), and the Grafana dashboard
(docs/grafana-dashboard.json) is valid and queries only strata_ metrics.  When a
`docker` CLI with compose is present, `docker compose config` validates it as well."""

import json
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
        # Kafka: EXTERNAL listens on all interfaces and advertises what the host reaches
        # (its published port); INTERNAL advertises the service name, unpublished.
        listeners = dict(e.split("://") for e in f["listeners"].split(","))
        advertised = dict(e.split("://") for e in f["advertised-listeners"].split(","))
        protocols = dict(e.split(":") for e in f["listener-security-protocol-map"].split(","))
        assert set(listeners) == set(advertised) == set(protocols) == {"INTERNAL", "EXTERNAL"}, name
        lhost, lport = host_port(listeners["EXTERNAL"])
        ahost, aport = host_port(advertised["EXTERNAL"])
        assert lhost == "0.0.0.0" and ahost == "localhost" and lport == aport, name
        assert f"{aport}:{lport}" in [str(p) for p in svc["ports"]], name
        assert aport not in published
        published.add(aport)
        ihost, iport = host_port(advertised["INTERNAL"])
        assert ihost == name and host_port(listeners["INTERNAL"]) == ("0.0.0.0", iport), name
        assert all(str(p).split(":")[-1] != str(iport) for p in svc["ports"]), name
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


# --- metrics: the brokers' metrics port, Prometheus and the Grafana dashboard ------------

METRICS_PORT = 9644
PROMETHEUS_CONFIG = REPO_ROOT / "deploy" / "prometheus.yml"
DASHBOARD = REPO_ROOT / "docs" / "grafana-dashboard.json"


def test_brokers_serve_metrics(compose):
    services = compose["services"]
    published = set()
    for name in BROKERS:
        svc = services[name]
        # STRATA_METRICS_LISTEN, not a flag: the same file works with a binary built before
        # --metrics-listen existed (it ignores the variable).
        assert svc["environment"]["STRATA_METRICS_LISTEN"] == f"0.0.0.0:{METRICS_PORT}", name
        assert "metrics-listen" not in flags(svc["command"])
        host_ports = [str(p).split(":")[0] for p in svc["ports"] if str(p).endswith(f":{METRICS_PORT}")]
        assert len(host_ports) == 1, f"{name} publishes its metrics port once"
        assert host_ports[0] not in published
        published.add(host_ports[0])


def test_prometheus_scrapes_every_broker(compose):
    prom = compose["services"]["prometheus"]
    assert prom["image"].startswith("prom/prometheus:")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"] if v.startswith("./")}
    config_in_container = "/etc/prometheus/prometheus.yml"
    assert config_in_container in mounts, prom["volumes"]
    assert (REPO_ROOT / mounts[config_in_container]).resolve() == PROMETHEUS_CONFIG.resolve()
    assert f"--config.file={config_in_container}" in prom.get("command", [f"--config.file={config_in_container}"])
    assert "9090:9090" in [str(p) for p in prom["ports"]]

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["strata"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{b}:{METRICS_PORT}" for b in BROKERS}
    # The scrape targets are names on the compose network: the brokers' service names.
    for b in BROKERS:
        assert compose["services"][b].get("hostname", b) == b


PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "le", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions, keywords,
    label names (inside {} or by/without/on/ignoring lists), durations or Grafana variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)        # strings
    e = re.sub(r"\$\{?\w+\}?", "", e)                     # $__rate_interval, ${var}
    e = re.sub(r"\{[^}]*\}", "", e)                       # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                      # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue                                      # a function or keyword
        names.add(word)
    return names


def test_metric_names_extraction():
    assert metric_names('sum by (api) (rate(strata_requests_total{api="Produce"}[$__rate_interval]))') == {"strata_requests_total"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) / y") == {"x_bucket", "y"}


def test_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"]
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    for row in dashboard["panels"]:
        panels += [p for p in row.get("panels", []) if p.get("type") != "row"]
    assert len(panels) >= 12
    used = set()
    for panel in panels:
        exprs = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
        assert exprs, f"panel {panel['title']!r} has no query"
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{panel['title']!r}: no metric in {expr!r}"
            assert all(n.startswith("strata_") for n in names), f"{panel['title']!r}: {names}"
            used |= names
    # What the issue asks the dashboard to show.
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    for metric in ("strata_requests_total", "strata_request_duration_seconds", "strata_store_requests_total",
                   "strata_topic_bytes", "strata_consumer_lag", "strata_raft_commit_index",
                   "strata_brokers_live", "strata_produce_bytes_total", "strata_fetch_bytes_total",
                   "strata_cache_hits_total"):
        assert metric in bases, metric
    # Every metric it reads is one the broker exports (the table in docs/architecture.md).
    documented = set(re.findall(r"`(strata_[a-z0-9_]+)`", (REPO_ROOT / "docs" / "architecture.md").read_text()))
    assert bases <= documented, f"not exported: {sorted(bases - documented)}"
