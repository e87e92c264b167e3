#!/usr/bin/env bash
# scripts/c100k.sh [CONNS] [--hold SECS] [--rate MSGS_PER_SEC] [--connect-rate N] [--record]
#
# Holds CONNS connections (default 100,000) open on this machine, all at once,
# against `server --mode prefork --worker event`, and reports how many were
# held, the errors, the server's resident memory per connection and the
# latency of a low message rate spread over all of them.
#
# One process may open at most `ulimit -n` files (20,000 here, the hard
# limit, to which the script raises its own), so both sides are split:
#  - the server gets enough workers for CONNS with room to spare, each capped
#    at --max-conns just below the limit (one shared listener: a worker at
#    its cap stops accepting and another takes the next connection);
#  - the load comes from several `client` instances, each bound to its own
#    source address (127.0.0.2, 127.0.0.3, ...: a source address has only
#    ip_local_port_range ports towards one server address), each with its
#    share of the connections and of the rate, all with one --start-at so that
#    they measure the same window after ramping up.
# While the connections are held it counts the server's ESTABLISHED sockets
# (/proc/net/tcp) and sums the RSS of the server's process tree; then it
# merges the clients' reports (`client merge --strict`) and prints the result.
# If something stops it short of CONNS it says which limit did (file
# descriptors, ephemeral ports, memory, nf_conntrack, the server's cap).
#
#   --hold SECS          how long every connection is held and measured (default 30)
#   --rate N             messages per second in total over all connections (default CONNS / 50)
#   --connect-rate N     new connections per second in total (default 10000)
#   --record             also write docs/bench/c100k.json (rendered into docs/BENCHMARKS.md)
#   C100K_NO_BUILD=1     use the release binaries already built
#
# Every step is bounded in time; it stops only the processes it started, by
# PID, and none is left running when it exits (trap EXIT). Exit status 0 when
# every connection was held and every reply was right, 1 otherwise, 2 for bad
# arguments.
set -euo pipefail
shopt -s nullglob

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SERVER=$ROOT/target/release/server
CLIENT=$ROOT/target/release/client

usage() {
  sed -n '2p' "$0" | sed 's/^# /usage: /' >&2
  exit 2
}

CONNS=100000
HOLD=30
RATE=
CONNECT_RATE=10000
RECORD=0
while [ $# -gt 0 ]; do
  case $1 in
    --hold) HOLD=${2:-}; shift 2 ;;
    --rate) RATE=${2:-}; shift 2 ;;
    --connect-rate) CONNECT_RATE=${2:-}; shift 2 ;;
    --record) RECORD=1; shift ;;
    -h|--help) usage ;;
    -*) echo "c100k: unknown option $1" >&2; usage ;;
    *) CONNS=$1; shift ;;
  esac
done
for v in CONNS HOLD CONNECT_RATE; do
  if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then echo "c100k: $v must be a positive whole number, not '${!v}'" >&2; usage; fi
done
RATE=${RATE:-$(( CONNS / 50 > 0 ? CONNS / 50 : 1 ))}
if ! [[ $RATE =~ ^[1-9][0-9]*$ ]]; then echo "c100k: --rate must be a positive whole number" >&2; usage; fi

# ---------------------------------------------------------------------------
# Limits and sizing
# ---------------------------------------------------------------------------

HARD=$(ulimit -Hn)
ulimit -n "$HARD"
NOFILE=$(ulimit -n)
# Per process: the limit less some room for the process's own files.
PER_PROC=$(( NOFILE - 200 ))
if [ "$PER_PROC" -lt 1000 ]; then
  echo "c100k: the open-file limit is $NOFILE: too low for this test" >&2
  exit 1
fi
# Server workers: each at most PER_PROC connections, with a third to spare
# for an uneven spread over the workers.
WORKERS=$(( (CONNS * 4 / 3 + PER_PROC - 1) / PER_PROC ))
[ "$WORKERS" -lt 2 ] && WORKERS=2
# Client instances: each from its own source address, with at most PER_PROC
# connections and at most half the ephemeral port range (connect() tries the
# ports of one parity first, the other half only when those are taken, which
# makes every further connect from that address scan the first half).
read -r PORT_LO PORT_HI < /proc/sys/net/ipv4/ip_local_port_range
PORTS=$(( PORT_HI - PORT_LO + 1 ))
PER_INSTANCE_MAX=$(( PER_PROC < PORTS / 2 ? PER_PROC : PORTS / 2 ))
INSTANCES=$(( (CONNS + PER_INSTANCE_MAX - 1) / PER_INSTANCE_MAX ))
if [ "$INSTANCES" -gt 250 ]; then
  echo "c100k: $CONNS connections would need $INSTANCES source addresses" >&2
  exit 1
fi
CONNTRACK_MAX=$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo "")
CONNTRACK_COUNT0=$(cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo "")
MEM_AVAIL0=$(awk '/^MemAvailable:/ { printf "%d", $2 * 1024 }' /proc/meminfo)

# Timing: the clients ramp up at CONNECT_RATE in total, then all of them
# start measuring at one moment and hold for HOLD seconds.
RAMP=$(( (CONNS + CONNECT_RATE - 1) / CONNECT_RATE ))
MARGIN=5
REPLY_TIMEOUT=10
# The clients' final bound: ramp, hold, the final checks, and a drain.
CLIENT_BOUND=$(( MARGIN + RAMP + HOLD + 2 * REPLY_TIMEOUT + 30 ))

WORK=$ROOT/target/c100k/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$WORK"
echo "c100k: $CONNS connections: $WORKERS server workers (--max-conns $PER_PROC), $INSTANCES client instances," \
     "$RATE msgs/s for $HOLD s; open files per process $NOFILE; results in $WORK"

# ---------------------------------------------------------------------------
# Processes: everything started is recorded and stopped by PID on exit
# ---------------------------------------------------------------------------

SERVER_PID=
CLIENT_PIDS=()
cleanup() {
  local p
  for p in "${CLIENT_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
}
trap cleanup EXIT

if [ "${C100K_NO_BUILD:-0}" != 1 ]; then
  cargo build --release -q --bin server --bin client
fi

# The whole process tree of the server: it and its workers.
tree_pids() {
  local root=$1 pids=("$1") p
  for p in $(pgrep -P "$root" || true); do pids+=("$p"); done
  echo "${pids[@]}"
}
tree_rss() {
  local total=0 p kb
  for p in $(tree_pids "$SERVER_PID"); do
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$(( total + ${kb:-0} * 1024 ))
  done
  echo "$total"
}
# ESTABLISHED sockets whose local address is the server's 127.0.0.1:PORT (the
# server's side of each connection; a client socket on 127.0.0.2 may have the
# same port number).
server_established() {
  local local_addr
  local_addr=$(printf '0100007F:%04X' "$PORT")
  awk -v a="$local_addr" '$4 == "01" && $2 == a { n++ } END { print n + 0 }' /proc/net/tcp
}

"$SERVER" --mode prefork --worker event --workers "$WORKERS" --max-conns "$PER_PROC" --backlog 4096 \
  --listen 127.0.0.1:0 >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do
  grep -q '^listening on ' "$WORK/server.out" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '^listening on ' "$WORK/server.out"; then
  echo "c100k: the server did not start:" >&2
  tail -5 "$WORK/server.log" >&2
  exit 1
fi
ADDR=$(awk '/^listening on / { print $3; exit }' "$WORK/server.out")
PORT=${ADDR##*:}
# Its workers up, then the baseline memory.
for _ in $(seq 100); do
  [ "$(pgrep -P "$SERVER_PID" | wc -l)" -ge "$WORKERS" ] && break
  sleep 0.1
done
RSS_BASE=$(tree_rss)

START_AT=$(awk -v m="$MARGIN" -v r="$RAMP" -v now="$(date +%s.%N)" 'BEGIN { printf "%.3f", now + m + r }')
PER_RATE=$(( CONNECT_RATE / INSTANCES > 0 ? CONNECT_RATE / INSTANCES : 1 ))
for i in $(seq 0 $(( INSTANCES - 1 ))); do
  n=$(( CONNS / INSTANCES + (i < CONNS % INSTANCES ? 1 : 0) ))
  r=$(( RATE / INSTANCES + (i < RATE % INSTANCES ? 1 : 0) ))
  [ "$r" -lt 1 ] && r=1
  timeout --kill-after=5 "$CLIENT_BOUND" "$CLIENT" --addr "$ADDR" --source-ip "127.0.0.$(( i + 2 ))" \
    -c "$n" -t 1 --rate "$r" --seed "$(( i + 1 ))" --connect-rate "$PER_RATE" --start-at "$START_AT" \
    -d "${HOLD}s" --timeout "${REPLY_TIMEOUT}s" -q --json "$WORK/client-$i.json" \
    >"$WORK/client-$i.txt" 2>"$WORK/client-$i.err" &
  CLIENT_PIDS+=($!)
done

# In the middle of the hold: the server's own count and its memory.
MID=$(awk -v s="$START_AT" -v h="$HOLD" 'BEGIN { printf "%.3f", s + h / 2 }')
while awk -v m="$MID" -v now="$(date +%s.%N)" 'BEGIN { exit !(now < m) }'; do
  alive=0
  for p in "${CLIENT_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ "$alive" = 1 ] || break
  sleep 0.2
done
HELD_SERVER=$(server_established)
RSS_HELD=$(tree_rss)
CONNTRACK_COUNT=$(cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo "")
MEM_AVAIL=$(awk '/^MemAvailable:/ { printf "%d", $2 * 1024 }' /proc/meminfo)
echo "c100k: during the hold the server has $HELD_SERVER established connections, RSS $(( RSS_HELD / 1048576 )) MiB"

FAILED=0
for i in "${!CLIENT_PIDS[@]}"; do
  if ! wait "${CLIENT_PIDS[$i]}"; then FAILED=1; fi
done
CLIENT_PIDS=()
reports=("$WORK"/client-*.json)
MERGE_OK=1
if [ ${#reports[@]} -gt 0 ]; then
  "$CLIENT" merge --strict "${reports[@]}" --json "$WORK/merged.json" >"$WORK/merged.txt" 2>"$WORK/merged.err" || MERGE_OK=0
fi
cat "$WORK"/client-*.err >&2 || true
SERVER_ALIVE=1
kill -0 "$SERVER_PID" 2>/dev/null || SERVER_ALIVE=0

# ---------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------

RECORD_FILE=
[ "$RECORD" = 1 ] && RECORD_FILE=$ROOT/docs/bench/c100k.json
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain -- client server common src 2>/dev/null)" ] && COMMIT="$COMMIT + uncommitted changes"
COMMAND="scripts/c100k.sh $CONNS --hold $HOLD --rate $RATE --connect-rate $CONNECT_RATE"
export WORK CONNS HOLD RATE WORKERS INSTANCES PER_PROC NOFILE PORTS HELD_SERVER RSS_BASE RSS_HELD \
  CONNTRACK_MAX CONNTRACK_COUNT0 CONNTRACK_COUNT MEM_AVAIL0 MEM_AVAIL SERVER_ALIVE FAILED MERGE_OK \
  RECORD_FILE COMMIT COMMAND
python3 - <<'PY'
import glob, json, os, platform, time

e = os.environ
num = lambda k: int(e[k]) if e.get(k, "").strip() else None
conns, held_server = num("CONNS"), num("HELD_SERVER")
try:
    m = json.load(open(os.path.join(e["WORK"], "merged.json")))
except (OSError, ValueError):
    m = None
instances = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(e["WORK"], "client-*.json")))]
c = (m or {}).get("connections", {})
held = c.get("held", 0)
errors = (m or {}).get("errors", {})
cerr = c.get("connect_errors", {})
limit = []
if cerr.get("fd_limit"):
    limit.append("file descriptors: %d sockets failed with EMFILE/ENFILE (ulimit -n %s per process)" % (cerr["fd_limit"], e["NOFILE"]))
if cerr.get("no_local_port"):
    limit.append("ephemeral ports: %d connects found no free local port (%s ports per source address)" % (cerr["no_local_port"], e["PORTS"]))
if cerr.get("no_memory"):
    limit.append("kernel memory: %d sockets failed with ENOMEM/ENOBUFS" % cerr["no_memory"])
cmax, ccount = num("CONNTRACK_MAX"), num("CONNTRACK_COUNT")
if cmax and ccount is not None and ccount >= 0.95 * cmax:
    limit.append("nf_conntrack: %d of %d entries in use" % (ccount, cmax))
avail = num("MEM_AVAIL")
if avail is not None and avail < 512 * 2**20:
    limit.append("memory: only %d MiB available" % (avail // 2**20))
if held_server is not None and held_server < conns and not limit:
    if cerr.get("connect_timeout") or cerr.get("refused"):
        limit.append("the server: %d connects timed out, %d refused (workers at --max-conns %s? the backlog?)"
                     % (cerr.get("connect_timeout", 0), cerr.get("refused", 0), e["PER_PROC"]))
if e["SERVER_ALIVE"] != "1":
    limit.append("the server died")
if m is None:
    limit.append("no merged report (a client failed to run: see its .err file in %s)" % e["WORK"])
ok = m is not None and held == conns and held_server == conns and e["FAILED"] == "0" and e["MERGE_OK"] == "1" and not limit
lat = lambda k: {q: (m or {}).get(k, {}).get("percentiles_us", {}).get(p) for q, p in (("p50", "p50"), ("p99", "p99"), ("max", "p100"))} if m and m.get(k) else None
rss_held, rss_base = num("RSS_HELD"), num("RSS_BASE")
result = {
    "command": e["COMMAND"],
    "commit": e["COMMIT"],
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "machine": "%s, %d cores, Linux %s, open files per process %s" % (platform.processor() or platform.machine(), os.cpu_count(), platform.release(), e["NOFILE"]),
    "target": conns,
    "held": held,
    "held_by_server_count": held_server,
    "closed_by_server": c.get("closed_by_server", 0),
    "unanswered": c.get("unanswered", 0),
    "failed_to_connect": c.get("failed_to_connect", 0),
    "connect_errors": {k: v for k, v in cerr.items() if v},
    "errors": (m or {}).get("errors_total", 0),
    "errors_by_kind": {k: v for k, v in errors.items() if v},
    "messages": (m or {}).get("messages", 0),
    "msgs_per_sec": (m or {}).get("msgs_per_sec", 0),
    "rate": num("RATE"),
    "hold_secs": num("HOLD"),
    "instances": len(instances),
    "windows": (m or {}).get("windows", []),
    "latency_us": lat("latency"),
    "latency_uncorrected_us": lat("latency_uncorrected"),
    "lag_us": lat("lag"),
    "server": {
        "workers": num("WORKERS"),
        "max_conns_per_worker": num("PER_PROC"),
        "rss_bytes": rss_held,
        "rss_idle_bytes": rss_base,
        "rss_per_conn_bytes": round(rss_held / conns) if rss_held and conns else None,
        "rss_growth_per_conn_bytes": round((rss_held - rss_base) / conns) if rss_held and conns else None,
    },
    "nf_conntrack": {"max": cmax, "count_before": num("CONNTRACK_COUNT0"), "count_held": ccount},
    "limit": "; ".join(limit) if limit else "none: every connection was held",
    "passed": ok,
}
text = json.dumps(result, indent=2) + "\n"
open(os.path.join(e["WORK"], "c100k.json"), "w").write(text)
if e.get("RECORD_FILE"):
    open(e["RECORD_FILE"], "w").write(text)
l, g = result["latency_us"] or {}, result["lag_us"] or {}
s = result["server"]
print("c100k: %s" % ("PASS" if ok else "FAIL"))
print("  connections  %d of %d held to the end (server's count during the hold: %s); %d closed by the server, %d unanswered, %d failed to connect %s"
      % (held, conns, held_server, result["closed_by_server"], result["unanswered"], result["failed_to_connect"], result["connect_errors"] or ""))
print("  errors       %d %s" % (result["errors"], result["errors_by_kind"] or ""))
if s["rss_per_conn_bytes"] is not None:
    print("  server RSS   %.1f MiB over %d workers while held: %d B per connection (%d B above the idle %.1f MiB)"
          % (s["rss_bytes"] / 2**20, s["workers"], s["rss_per_conn_bytes"], s["rss_growth_per_conn_bytes"], s["rss_idle_bytes"] / 2**20))
print("  messages     %d (%.1f msgs/s over the common window of %d instances)" % (result["messages"], result["msgs_per_sec"], result["instances"]))
print("  latency      p50 %s µs  p99 %s µs  max %s µs (corrected); schedule lag p99 %s µs" % (l.get("p50"), l.get("p99"), l.get("max"), g.get("p99")))
print("  limit        %s" % result["limit"])
if e.get("RECORD_FILE"):
    print("  recorded in  %s" % e["RECORD_FILE"])
raise SystemExit(0 if ok else 1)
PY
