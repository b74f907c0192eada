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
#
# Setup (idempotent): reuses .venv if it has confluent-kafka, else creates it and
# installs the pin from tests/integration/requirements.txt; builds
# target/release/strata if it is missing (set STRATA_BIN to use another binary).
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

# scripts/ holds the bench package, tests/ the harness package it shares with the tests.
PYTHONPATH="$(pwd)/scripts:$(pwd)/tests${PYTHONPATH:+:$PYTHONPATH}" \
    exec .venv/bin/python -m bench --broker-bin "$(realpath "$bin")" "$@"
