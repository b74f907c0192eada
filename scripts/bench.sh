#!/usr/bin/env bash
# THE benchmark command for Strata (issue 5). Prepares what it needs, then runs
# the scripts/bench package (`python -m bench`, its broker launched by tests/harness),
# which starts its own release broker on a free port and prints one `name: value unit`
# line per figure.
#
#   scripts/bench.sh --quick          # ~1 minute smoke run
#   scripts/bench.sh                  # default run (2 GiB produce, 20 s latency phase)
#   scripts/bench.sh --help           # all options (--volume 512MiB, --store URL, ...)
#   scripts/bench.sh --soak           # 30 min soak: 1000 partitions x 1 produce/s of 1 KiB, a report
#                                     # block a minute (index entries, state/snapshot bytes, RSS, objects,
#                                     # compaction MB/s, PUTs/GETs per GB), growth since minute 10, catch-up read
#   scripts/bench.sh --soak --soak-minutes 2 --soak-partitions 50 --soak-report-seconds 20   # soak smoke run
#   scripts/bench.sh --s3-trickle     # 300 partitions x 1 request/s on moto behind a +30 ms PUT proxy: PUTs/s, cost, latency
#   scripts/bench.sh --loadgen python # the produce, tail and catch-up phases driven by the
#                                     # Python clients instead of strata-loadgen
#
# Setup (idempotent): reuses .venv if it has confluent-kafka, else creates it and
# installs the pin from tests/integration/requirements.txt; rebuilds target/release/strata
# (set STRATA_BIN to use another binary) and the load generator,
# tools/loadgen/target/release/strata-loadgen (a cargo project of its own: rdkafka, which
# compiles librdkafka from its bundled source with ./configure and make; installs a C
# toolchain with apt-get if cc or make is missing). Both builds are no-ops when up to date.
set -euo pipefail

cd "$(dirname "$0")/.."

req=tests/integration/requirements.txt
if ! .venv/bin/python -c 'import confluent_kafka' >/dev/null 2>&1; then
    echo "==> creating .venv with confluent-kafka" >&2
    py=python3
    command -v python3.11 >/dev/null 2>&1 && py=python3.11
    [ -x .venv/bin/python ] || "$py" -m venv .venv
    .venv/bin/python -m pip install --disable-pip-version-check -q "$(grep -E '^confluent-kafka==' "$req")"
fi
# --s3-trickle runs moto's S3 server behind the aiohttp latency proxy.
case " $* " in
    *" --s3-trickle "*)
        if ! .venv/bin/python -c 'import moto, aiohttp' >/dev/null 2>&1; then
            echo "==> installing moto[server] and aiohttp into .venv" >&2
            .venv/bin/python -m pip install --disable-pip-version-check -q \
                "$(grep -E '^moto\[server\]==' "$req")" "$(grep -E '^aiohttp==' "$req")"
        fi
        ;;
esac

bin="${STRATA_BIN:-target/release/strata}"
if [ -z "${STRATA_BIN:-}" ]; then
    # Always rebuild (a no-op when up to date), so a run never measures a stale binary.
    echo "==> cargo build --release" >&2
    cargo build --release
fi

# The load generator, unless the run asks for the Python clients (or is an --idle-latency
# or an --s3-trickle run, neither of which uses it).
want_loadgen=1
prev=""
for arg in "$@"; do
    case "$prev|$arg" in
        "--loadgen|python" | *"|--loadgen=python" | *"|--idle-latency" | *"|--s3-trickle") want_loadgen=0 ;;
    esac
    prev="$arg"
done
if [ "$want_loadgen" = 1 ]; then
    if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
        echo "==> installing a C toolchain (build-essential) for librdkafka" >&2
        as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q build-essential
    fi
    echo "==> cargo build --release --manifest-path tools/loadgen/Cargo.toml" >&2
    if ! cargo build --release --manifest-path tools/loadgen/Cargo.toml --target-dir tools/loadgen/target; then
        echo "strata-loadgen did not build; run with --loadgen python to use the Python clients" >&2
        exit 1
    fi
fi

# scripts/ holds the bench package, tests/ the harness package it shares with the tests.
PYTHONPATH="$(pwd)/scripts:$(pwd)/tests${PYTHONPATH:+:$PYTHONPATH}" \
    exec .venv/bin/python -m bench --broker-bin "$(realpath "$bin")" "$@"
