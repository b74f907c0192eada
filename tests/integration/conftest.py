"""Shared harness for Strata's real-client integration tests.

The launcher lives in tests/harness (package `harness`, on sys.path through pytest.ini's
`pythonpath`), shared with the benchmark; this file re-exports the names the tests import
from `conftest` and holds the pytest hooks.

`Broker` runs the `strata` binary on a free loopback port with a fresh data dir.  Its
object store is chosen by STRATA_TEST_STORE:

* `local` (default): a file:// directory inside pytest's tmp_path;
* `s3`: a bucket of its own on a real S3-compatible server process, moto's
  server (`moto_server`, in-memory), started once per pytest session on a free
  loopback port.  The broker talks to it over HTTP with the standard AWS_*
  variables, exactly as it would talk to MinIO or S3.

scripts/test.sh runs the whole suite once per store.  The `broker` fixture
yields a started broker and tears it down afterwards, printing the tail of the
broker log if the test failed.
"""

from __future__ import annotations

import pytest

from harness.broker import START_TIMEOUT, STOP_TIMEOUT, TEST_STORE, Broker, BrokerError
from harness.fixtures import _stop_s3_server, broker, check_health, supervise, unique_topic
from harness.fixtures import failed as _failed
from harness.process import REPO_ROOT, STRATA_BIN, free_port
from harness.process import die_with_parent as _die_with_parent
from harness.proxy import TcpProxy
from harness.s3 import S3_ENV, S3Server, s3_server

# Re-exported: the tests import these from `conftest`; the fixtures are found here by pytest.
__all__ = [
    "REPO_ROOT", "S3_ENV", "START_TIMEOUT", "STOP_TIMEOUT", "STRATA_BIN", "TEST_STORE", "Broker",
    "BrokerError", "S3Server", "TcpProxy", "_die_with_parent", "_failed", "_stop_s3_server", "broker",
    "check_health", "free_port", "s3_server", "supervise", "unique_topic",
]

if TEST_STORE not in ("local", "s3"):
    raise RuntimeError(f"STRATA_TEST_STORE must be 'local' or 's3', not {TEST_STORE!r}")


# ---------------------------------------------------------------- pytest glue
# Modules that test the wire protocol, the front end, metrics or deployment files: what
# they check does not depend on the object store, so they run in the local pass only
# (the S3 pass keeps to what exercises the store), which keeps CI within its time.
# Transactions write marker objects, so they run in both.
STORE_INDEPENDENT = {
    "test_wire_fields", "test_wire_order", "test_admin_wire", "test_admin_apis", "test_semantics",
    "test_kafkajs_semantics", "test_compose", "test_terraform", "test_metrics", "test_tls",
    "test_sasl", "test_acls", "test_record_errors", "test_kubernetes", "test_consumer_protocol",
}


def pytest_addoption(parser):
    parser.addoption(
        "--measure", action="store_true", default=False,
        help="fault tests (test_availability.py) run their faults at full length and print "
             "the figures docs/performance.md records, instead of CI's shorter ones",
    )


def pytest_collection_modifyitems(config, items):
    if TEST_STORE == "local":
        return
    skip = pytest.mark.skip(reason="store-independent: runs in the local pass only")
    for item in items:
        if item.module.__name__ in STORE_INDEPENDENT:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"strata object store for this run: STRATA_TEST_STORE={TEST_STORE}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep
