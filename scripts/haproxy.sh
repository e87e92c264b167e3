#!/usr/bin/env bash
# scripts/haproxy.sh [SECS]
#
# Three Switchyard servers (event, prefork, thread) with --proxy-protocol
# behind a real HAProxy (send-proxy-v2, health checks every 100 ms, three
# retries with redispatch), the configuration of docs/OPERATIONS.md. Two
# clients go through HAProxy for SECS seconds (default 12): 30 held
# connections from 127.0.0.2-5 and one new connection per message from
# 127.0.0.6 at 200 a second. At a third of the run the event server is killed
# (SIGKILL); at two thirds the prefork server is drained (SIGTERM). It prints
# the clients' summaries, HAProxy's sessions per server, what each server
# logged about its clients, and the survivor's metrics.
#
# What to expect: the only failures are the sessions the killed server had
# open; every new connection is served (HAProxy retries it elsewhere); the
# drained server finishes its clients; the servers name the clients'
# addresses, not HAProxy's. tests/e2e/haproxy.rs checks all of that.
#
# Needs haproxy (scripts/setup.sh installs it). Every step is bounded in
# time; it stops only the processes it started, by PID (trap EXIT). Exit
# status 0 when the failures are exactly the killed server's sessions.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-12}
case $SECS in ''|*[!0-9]*) echo "usage: scripts/haproxy.sh [SECS]" >&2; exit 2 ;; esac
[ "$SECS" -ge 6 ] || { echo "haproxy.sh: SECS must be at least 6" >&2; exit 2; }
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$HAPROXY" ] || { echo "haproxy.sh: haproxy is not installed (scripts/setup.sh)" >&2; exit 1; }
cargo build --release -q --bin server --bin client
SERVER=target/release/server
CLIENT=target/release/client
DIR=$(mktemp -d /tmp/switchyard-haproxy.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

# A server on a free port; its pid and port land in the named variables.
start() { # NAME MODE ARGS...
  local name=$1 mode=$2; shift 2
  RUST_LOG=info,switchyard_server::net::proxy=debug \
    "$SERVER" --mode "$mode" --listen 127.0.0.1:0 --proxy-protocol --grace 30 --metrics 127.0.0.1:0 "$@" \
    >"$DIR/$name.out" 2>"$DIR/$name.log" &
  PIDS+=($!)
  eval "${name}_PID=$!"
  for _ in $(seq 100); do grep -q '^listening on' "$DIR/$name.out" && break; sleep 0.1; done
  eval "${name}_ADDR=$(sed -n 's/^listening on \([^ ]*\).*/\1/p' "$DIR/$name.out")"
  eval "${name}_METRICS=$(sed -n 's/.*metrics on http:\/\/\([^/]*\)\/metrics.*/\1/p' "$DIR/$name.log" | head -1)"
}
start event event
start prefork prefork --workers 2 --worker event
start thread thread --max-conns-per-ip 8
FRONT=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$DIR/haproxy.cfg" <<EOF
global
    log stdout format raw local0
    stats socket $DIR/admin.sock level admin
    maxconn 4096

defaults
    mode tcp
    log global
    log-format "SESSION %ci:%cp %s %ts %U %B"
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1

frontend switchyard
    bind $FRONT
    default_backend servers

backend servers
    balance roundrobin
    server event $event_ADDR send-proxy-v2 check inter 100ms fall 1 rise 1
    server prefork $prefork_ADDR send-proxy-v2 check inter 100ms fall 1 rise 1
    server thread $thread_ADDR send-proxy-v2 check inter 100ms fall 1 rise 1
EOF
"$HAPROXY" -db -f "$DIR/haproxy.cfg" >"$DIR/haproxy.log" 2>&1 &
PIDS+=($!)
status() { echo "show stat" | python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
out = b""
while True:
    d = s.recv(65536)
    if not d: break
    out += d
for l in out.decode().splitlines():
    f = l.split(",")
    if f[0] == "servers" and f[1] != "BACKEND": print(f[1], f[17])
' "$DIR/admin.sock" 2>/dev/null || true; }
for _ in $(seq 100); do [ "$(status | grep -c ' UP')" -eq 3 ] && break; sleep 0.1; done
echo "== HAProxy on $FRONT: $(status | tr '\n' ' ')"

"$CLIENT" --addr "$FRONT" -c 30 -t 1 -d "${SECS}s" -q --json "$DIR/held.json" \
  --source-ip 127.0.0.2 --source-ip 127.0.0.3 --source-ip 127.0.0.4 --source-ip 127.0.0.5 >"$DIR/held.txt" 2>&1 &
HELD=$!; PIDS+=($HELD)
"$CLIENT" --addr "$FRONT" --reconnect -c 2 -r 200 -t 1 -d "${SECS}s" -q --json "$DIR/fresh.json" \
  --source-ip 127.0.0.6 >"$DIR/fresh.txt" 2>&1 &
FRESH=$!; PIDS+=($FRESH)
sleep $((SECS / 3))
echo "== $(date +%T) kill -9 the event server (pid $event_PID)"
kill -9 "$event_PID"
{ wait "$event_PID"; } 2>/dev/null || true
sleep $((SECS / 3))
echo "== $(date +%T) SIGTERM the prefork server (pid $prefork_PID): it drains"
kill -TERM "$prefork_PID"
sleep 1
echo "== HAProxy: $(status | tr '\n' ' ')"
wait "$HELD" || true
wait "$FRESH" || true
echo "== held connections (127.0.0.2-5):"; cat "$DIR/held.txt"
echo "== a connection per message (127.0.0.6):"; cat "$DIR/fresh.txt"
sleep 1 # HAProxy logs a session when it ends
echo "== HAProxy's sessions per server (termination state):"
grep '^SESSION' "$DIR/haproxy.log" | awk '{print $3, $4}' | sort | uniq -c
echo "== what the servers logged about a client (and about HAProxy's own health checks):"
for s in prefork thread; do
  echo "$s: $(grep -m1 '127\.0\.0\.2:[0-9]*: PROXY v2 header from' "$DIR/$s.log" | sed 's/^\[[^]]*\] //')"
  echo "$s: $(grep -m1 '127\.0\.0\.1:[0-9]*: PROXY v2 header from' "$DIR/$s.log" | sed 's/^\[[^]]*\] //')"
done
echo "== the thread server's metrics:"
python3 -c "import urllib.request; print(urllib.request.urlopen('http://$thread_METRICS/metrics').read().decode())" \
  | grep -E '^switchyard_(connections_accepted_total|connections_refused_total|proxy_header_errors_total) '
# The verdict, as the test computes it.
python3 - "$DIR" <<'EOF'
import json, sys
d = sys.argv[1]
held, fresh = (json.load(open(f"{d}/{n}.json")) for n in ("held", "fresh"))
errors = lambda r: sum(v for v in r["errors"].values() if isinstance(v, int))
cut = 0
for l in open(f"{d}/haproxy.log"):
    f = l.split()
    if f[:1] == ["SESSION"] and f[2] == "event" and (not f[1].startswith("127.0.0.6:") or int(f[5]) < int(f[4])):
        cut += 1
failures = errors(held) + errors(fresh)
print(f"== client failures {failures}; sessions open on the killed server when it died {cut}:",
      "as expected" if failures == cut else "MISMATCH")
sys.exit(0 if failures == cut else 1)
EOF
