"""The pytest side of the harness: broker and cluster fixtures that fail a test whose
broker died or panicked, and print the broker logs of a failed test.

`failed()` reads the `rep_setup` / `rep_call` reports that the pytest_runtest_makereport
hook in tests/integration/conftest.py stores on each test item."""

from __future__ import annotations

import pytest

from harness.broker import Broker
from harness.cluster import Cluster
from harness.s3 import close_s3_server


def failed(request) -> bool:
    """Whether the test's setup or call failed (so far)."""
    node = request.node
    return any(
        getattr(node, "rep_" + when, None) is not None and getattr(node, "rep_" + when).failed
        for when in ("setup", "call")
    )


def check_health(b: Broker) -> list[str]:
    """Problems a test must not leave behind: a dead broker process or a panic in the log."""
    problems = []
    if b.proc is not None and b.proc.poll() is not None:
        problems.append(f"strata exited unexpectedly with code {b.proc.returncode}")
    if "panicked at" in b.log_text():
        problems.append("strata log contains a panic ('panicked at')")
    return problems


def supervise(request, b: Broker, start: bool = True, report=None):
    """The body of a broker fixture (`yield from supervise(...)`): yields the broker,
    then stops it; when the test failed or the broker is unhealthy, prints its log tail
    (and `report()`, if given); fails the test if the broker is unhealthy."""
    problems = []
    try:
        if start:
            b.start()
        yield b
        problems = check_health(b)
    finally:
        rc = None
        try:
            rc = b.stop()
        finally:
            if problems or failed(request):
                print(f"\n--- strata log tail ({b.log_path}, last exit code {rc}) ---")
                print(b.log_tail(150))
                if report is not None:
                    print(report())
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(scope="session", autouse=True)
def _stop_s3_server():
    yield
    close_s3_server()


@pytest.fixture
def broker(request, tmp_path):
    yield from supervise(request, Broker(tmp_path / "strata"))


@pytest.fixture
def unique_topic(request):
    """A topic name unique to the test (safe for kafka topic name rules)."""
    name = request.node.name
    clean = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return f"t-{clean}"[:200]


@pytest.fixture
def make_cluster(request, tmp_path):
    """Builds clusters that are killed at teardown; log tails printed on failure."""
    made: list[Cluster] = []

    def make(voters: int = 3, **kw) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", voters=voters, **kw)
        made.append(c)
        return c

    yield make
    test_failed = failed(request)
    panics = []
    for c in made:
        panics += c.panics()
        if test_failed or c.panics():
            print(c.report(80))
        c.close()
    if panics and not test_failed:
        pytest.fail(f"strata panicked on {panics}")
