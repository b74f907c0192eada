"""The benchmark's broker: the harness's `Broker` (tests/harness) with the benchmark's
binary, scratch dir, store and environment."""

from __future__ import annotations

import shlex

from harness import Broker

from bench.report import note

# Variables set unless the environment has them: quieter Raft logs, and no metrics
# listener (several brokers may share the machine).
BENCH_ENV = {"RUST_LOG": "info,openraft=warn", "STRATA_METRICS_LISTEN": "none"}
STOP_TIMEOUT = 30.0


def extra_args(a) -> list[str]:
    """--broker-arg (repeatable) then --broker-args (shell-split)."""
    return list(a.broker_arg) + shlex.split(a.broker_args or "")


def bench_broker(a) -> Broker:
    """A broker in --dir (data/, broker.log, objects/ unless --store) on a free port."""
    return Broker(a.dir, store="local", store_url=a.store or None, extra_args=extra_args(a),
                  binary=a.broker_bin.resolve(), env_defaults=BENCH_ENV)


def stop_broker(broker: Broker) -> int | None:
    """SIGTERM, SIGKILL after STOP_TIMEOUT s; returns the exit code."""
    rc = broker.stop(timeout=STOP_TIMEOUT)
    if broker.sigkilled:
        note(f"broker did not stop within {STOP_TIMEOUT:g} s of SIGTERM; SIGKILL")
    return rc
