#!/usr/bin/env bash
# THE test command for Strata: installs test dependencies (idempotently), builds,
# runs the Rust unit/integration tests, then the real-client integration suite.
#
# Run from anywhere; it cd's to the repo root. Expects a Debian machine with the
# Rust toolchain, Python 3.11 and Node 20. Needs root (or sudo) only the first
# time, to apt-get install kcat.
#
# Env knobs:
#   SKIP_INSTALL=1   skip the dependency install phase
#   SKIP_CARGO=1     skip cargo build/test (use an existing target/debug/strata)
#   PYTEST_ARGS=...  extra args for pytest (e.g. "-k kcat -x")
#   STRATA_TEST_STORES="local s3"  the object stores to run the integration suite
#                    against, one pytest run each (s3 = moto's server, started by the
#                    harness; see tests/harness/s3.py)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"

log() { printf '\n==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

install_deps() {
    local t0=$SECONDS

    # --- kcat (Debian bookworm ships it as 'kcat'; 'kafkacat' is a transitional name) ---
    if ! command -v kcat >/dev/null 2>&1 && ! command -v kafkacat >/dev/null 2>&1; then
        log "installing kcat via apt"
        as_root apt-get update
        if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y kcat; then
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y kafkacat
        fi
    fi

    # --- kubectl, for `kubectl kustomize` in test_kubernetes.py (bookworm's package is
    # kubectl 1.20 with kustomize v2.0.3; deploy/kubernetes/ renders with it too) ---
    if ! command -v kubectl >/dev/null 2>&1; then
        log "installing kubectl (kubernetes-client) via apt"
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y kubernetes-client
    fi

    # --- Python venv with pinned client libraries ---
    local req="tests/integration/requirements.txt"
    local stamp=".venv/.requirements.sha256"
    local want
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
        log "creating/updating Python venv at .venv"
        local py=python3
        command -v python3.11 >/dev/null 2>&1 && py=python3.11
        [ -x .venv/bin/python ] || "$py" -m venv .venv
        .venv/bin/python -m pip install --disable-pip-version-check -q -r "$req"
        echo "$want" > "$stamp"
    fi

    # --- kafkajs (pinned by tests/js/package-lock.json) ---
    local jsstamp="tests/js/node_modules/.strata-lock.sha256"
    local jswant
    jswant="$(sha256sum tests/js/package-lock.json | cut -d' ' -f1)"
    if [ ! -d tests/js/node_modules/kafkajs ] || [ "$(cat "$jsstamp" 2>/dev/null || true)" != "$jswant" ]; then
        log "installing kafkajs (npm ci)"
        (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
        echo "$jswant" > "$jsstamp"
    fi

    log "install phase took $((SECONDS - t0))s"
}

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
    install_deps
fi

if [ "${SKIP_CARGO:-0}" != "1" ]; then
    log "checks: format, layers"
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        rustup component add rustfmt clippy
    fi
    cargo fmt --all -- --check
    # Top-level modules of src/ import only downwards (see the script's LAYERS).
    python3 scripts/check_layers.py --quiet
    # The failpoints feature compiles in the fault-injection switches the integration
    # tests use (STRATA_FAILPOINT); release builds leave it out.
    log "cargo build --features failpoints"
    cargo build --features failpoints
    log "checks: generated request schema, clippy"
    # Regenerated from the kafka-protocol sources the build just fetched.
    if ! python3 scripts/gen_request_schema.py | diff -u src/protocol/bounds/schema.rs - >/dev/null; then
        echo "src/protocol/bounds/schema.rs differs from what scripts/gen_request_schema.py generates: regenerate it (python3 scripts/gen_request_schema.py > src/protocol/bounds/schema.rs)" >&2
        exit 1
    fi
    cargo clippy --all-targets --features failpoints -- -D warnings
    log "cargo test"
    cargo test --features failpoints
fi

export STRATA_BIN="${STRATA_BIN:-$ROOT/target/debug/strata}"
if [ ! -x "$STRATA_BIN" ]; then
    echo "broker binary not found at $STRATA_BIN" >&2
    exit 1
fi

# The whole suite once per object store; the durability tests run in the s3 pass only.
status=0
for store in ${STRATA_TEST_STORES:-local s3}; do
    log "integration tests (pytest), STRATA_TEST_STORE=$store"
    t0=$SECONDS
    # shellcheck disable=SC2086
    STRATA_TEST_STORE="$store" .venv/bin/python -m pytest tests/integration -v --timeout=300 --durations=15 ${PYTEST_ARGS:-} || status=$?
    log "integration tests against $store took $((SECONDS - t0))s (exit $status)"
    # pytest exit 5 = nothing collected (e.g. a -k that matches only the other pass)
    [ "$status" -eq 5 ] && status=0
    [ "$status" -ne 0 ] && break
done
exit "$status"
