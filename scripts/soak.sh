#!/usr/bin/env bash
# scripts/soak.sh [minutes]: the leak soak (issue 7, section 8).
#
# Starts one server per mode (serial, fork, thread, pool, event, reactor, and
# prefork with event, serial, thread and pool workers), all at the same time,
# each on 127.0.0.1 port 0 with --idle-timeout, and puts mixed load on every
# one for `minutes` (default 10; fractions work: 0.5 is 30 s): a closed-loop
# client, a fixed-rate client, a reconnect-per-message client (all the
# project's `client`, with --json reports) and hostile clients
# (scripts/hostile.py: slowloris, idle, connect-and-reset, hit-and-run).
#
# It samples RSS (VmRSS), open fds, threads and processes of each server and
# all its descendants (fork children, prefork workers) into
# <results>/<mode>/samples.csv: a baseline after a short warm-up once
# connections have settled, every 30 s during the load, and again once the
# load has stopped and connections have settled. Then it prints a Markdown report
# (also saved as <results>/report.md), ready to paste into docs/RELIABILITY.md,
# with a verdict per mode, and exits 1 if any mode failed.
#
# A mode passes when, after settling, its fds equal the baseline, its
# processes and threads are back to the baseline, its RSS grew by less than
# max(2 MiB, 10%) (docs/RELIABILITY.md, "Soak", says why), the server is alive
# and stops cleanly on SIGTERM, the normal clients had no error, and every
# hostile client saw what the server promises (an idle or too-slow connection
# is cut, a slow but steady one is not).
#
# Results go to target/soak/<UTC timestamp>/. Environment knobs (for
# debugging; the defaults are what CI and the published runs use):
#   SOAK_MODES="event fork"  only these modes (labels as in the report)
#   SOAK_NO_BUILD=1          use the release binaries already built
#   SOAK_SAMPLE_SECS=30      sampling interval during the load (default: 30 s,
#                            or a fifth of a run shorter than 150 s)
#
# Every process it starts is stopped by PID (servers: SIGTERM, then SIGKILL
# only if they do not exit); nothing else is touched.
set -euo pipefail
shopt -s nullglob

cd "$(dirname "$0")/.."
ROOT=$(pwd)
SERVER=$ROOT/target/release/server
CLIENT=$ROOT/target/release/client
HOSTILE=$ROOT/scripts/hostile.py

# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------

MINUTES=${1:-10}
if ! [[ $MINUTES =~ ^[0-9]+([.][0-9]+)?$ ]] || awk -v m="$MINUTES" 'BEGIN { exit !(m <= 0) }'; then
  echo "usage: scripts/soak.sh [minutes]   (a positive number, default 10; 0.5 = 30 s)" >&2
  exit 2
fi
DURATION=$(awk -v m="$MINUTES" 'BEGIN { d = int(m * 60 + 0.5); print (d < 10 ? 10 : d) }')
# Warm-up: the same load for a short while first, so that allocator arenas,
# thread stacks, pool threads and socket buffers exist before the baseline.
WARMUP=$(awk -v d="$DURATION" 'BEGIN { w = int(d / 30); print (w < 5 ? 5 : (w > 20 ? 20 : w)) }')
# Samples under load every 30 s (short runs: a fifth of the run, at least 5 s).
SAMPLE_SECS=${SOAK_SAMPLE_SECS:-$(awk -v d="$DURATION" 'BEGIN { s = int(d / 5); print (s > 30 ? 30 : (s < 5 ? 5 : s)) }')}
IDLE_TIMEOUT=2     # the servers' --idle-timeout: hostile clients are cut after this
SETTLE_MAX=30      # seconds to wait at most for connections, fds and threads to settle
STOP_WAIT=10       # seconds a server gets to exit after SIGTERM before SIGKILL
RSS_NOISE_KIB=2048 # RSS growth allowed: max(this, RSS_NOISE_PCT of the baseline)
RSS_NOISE_PCT=10
# Normal clients wait this long for a reply (the client's default is 5 s).
# The soak looks for leaks, not latency: a stall of a few seconds shows in
# the latency column rather than as an error. On the 2-core VM, fork(2) in
# any process sometimes takes 1-7 s under this load (docs/RELIABILITY.md,
# "Soak"), which fork mode pays for every connection.
REPLY_TIMEOUT=15s

# label | server flags | load profile. "serial" load suits servers that
# serve one connection at a time per process (see start_load). Those queue
# normal clients behind hostile ones, by design, for longer than the
# default --queue-timeout (the idle timeout), which would then refuse them;
# tests/e2e/hardening.rs (fast_trickle_*) covers that refusal. Here the limit
# is set past REPLY_TIMEOUT so that every failed normal client counts.
SERIAL_QUEUE=(--queue-timeout 30)
MODE_TABLE=(
  "serial|--mode serial ${SERIAL_QUEUE[*]}|serial"
  "fork|--mode fork|full"
  "thread|--mode thread|full"
  "pool|--mode pool|full"
  "event|--mode event|full"
  "reactor|--mode reactor|full"
  "prefork/event|--mode prefork --worker event --workers 2|full"
  "prefork/serial|--mode prefork --worker serial --workers 2 ${SERIAL_QUEUE[*]}|serial"
  "prefork/thread|--mode prefork --worker thread --workers 2|full"
  "prefork/pool|--mode prefork --worker pool --workers 2|full"
)
COMMON_FLAGS=(--listen 127.0.0.1:0 --metrics 127.0.0.1:0 --idle-timeout "$IDLE_TIMEOUT" --grace 5)

OUT=$ROOT/target/soak/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"

# Per-mode state, keyed by label.
MODES=()
declare -A FLAGS PROFILE DIR SPID PORT MPORT BASE_PROCS
declare -A S_PROCS S_THREADS S_RSS S_FDS S_ACC          # baseline ("start")
declare -A E_PROCS E_THREADS E_RSS E_FDS E_ZOMB E_ACC E_CONNS E_SETTLE E_ALIVE E_EXIT
declare -A PEAK_RSS PEAK_FDS PEAK_CONNS
LOAD_PIDS=()       # every load process (clients, hostile, session loops)
declare -A LOAD_WHAT  # pid -> "label kind phase", for exit codes

log() { printf '[soak %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------------------
# Process trees and samples
# ---------------------------------------------------------------------------

# PIDs of $1 and all its descendants (one `ps`, breadth-first).
tree_pids() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1; alive[$1] = 1 }
    END {
      if (!(root in alive)) exit
      q[1] = root; n = 1
      for (i = 1; i <= n; i++) {
        print q[i]
        k = split(kids[q[i]], c, " ")
        for (j = 1; j <= k; j++) q[++n] = c[j]
      }
    }'
}

# "procs threads rss_kib fds zombies" summed over the tree rooted at $1.
sample_tree() {
  local pid procs=0 threads=0 rss=0 fds=0 zombies=0 st r t fdl
  for pid in $(tree_pids "$1"); do
    read -r st r t < <(awk '/^State:/ { s = $2 } /^VmRSS:/ { r = $2 } /^Threads:/ { t = $2 }
                           END { print s " " r + 0 " " t + 0 }' "/proc/$pid/status" 2>/dev/null) || continue
    [ -n "$st" ] || continue   # exited between ps and now
    procs=$((procs + 1))
    threads=$((threads + t))
    rss=$((rss + r))
    [ "$st" = Z ] && zombies=$((zombies + 1))
    fdl=("/proc/$pid/fd/"*)
    fds=$((fds + ${#fdl[@]}))
  done
  echo "$procs $threads $rss $fds $zombies"
}

# Connections the server holds on port $1: accepted or waiting to be
# (established, close-wait, syn-recv), from `ss`; without `ss`, the server's
# own gauge from metrics port $2.
conn_count() {
  if command -v ss >/dev/null 2>&1; then
    ss -Htn state established state close-wait state syn-recv "( sport = :$1 )" | wc -l
  else
    scrape "$2" | metric switchyard_connections_active
  fi
}

# The server's Prometheus text from metrics port $1 (empty if the scrape
# fails or takes over 2 s: a serial server answers only between clients).
scrape() {
  # shellcheck disable=SC2016  # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3' \
    _ "$1" 2>/dev/null || true
}

# The value of metric $1 in the Prometheus text on stdin (empty if absent).
metric() { awk -v name="$1" '$1 == name { print $2; exit }'; }

# Samples mode $1's process tree and connections into the LAST_* variables.
take_sample() {
  read -r LAST_PROCS LAST_THREADS LAST_RSS LAST_FDS LAST_ZOMB < <(sample_tree "${SPID[$1]}")
  LAST_CONNS=$(conn_count "${PORT[$1]}" "${MPORT[$1]}")
}

# Appends the LAST_* sample of mode $1 (phase $2), plus the server's own
# counters from metrics (scraped after the fds were counted), to its CSV.
write_sample() {
  local m=$1 phase=$2
  local text
  text=$(scrape "${MPORT[$m]}")
  LAST_ACC=$(metric switchyard_connections_accepted_total <<<"$text")
  LAST_ACTIVE=$(metric switchyard_connections_active <<<"$text")
  printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$(date -u +%FT%TZ)" "$(( $(date +%s) - T0 ))" "$phase" \
    "$LAST_PROCS" "$LAST_THREADS" "$LAST_RSS" "$LAST_FDS" "$LAST_ZOMB" "$LAST_CONNS" "$LAST_ACC" "$LAST_ACTIVE" \
    >>"${DIR[$m]}/samples.csv"
}

# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------

# Starts the server of mode $1 and waits for its start-up line and metrics port.
start_server() {
  local m=$1 i port="" mport=""
  # shellcheck disable=SC2206  # the flags are words on purpose
  local flags=(${FLAGS[$m]})
  # The files exist before the background child opens them (no race with sed).
  : >"${DIR[$m]}/server.out"
  : >"${DIR[$m]}/server.err"
  "$SERVER" "${flags[@]}" "${COMMON_FLAGS[@]}" >"${DIR[$m]}/server.out" 2>"${DIR[$m]}/server.err" &
  SPID[$m]=$!
  for ((i = 0; i < 100; i++)); do
    port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\) mode=.*/\1/p' "${DIR[$m]}/server.out" "${DIR[$m]}/server.err" | head -1)
    mport=$(sed -n 's#.*metrics on http://127\.0\.0\.1:\([0-9]*\)/metrics.*#\1#p' "${DIR[$m]}/server.err" | head -1)
    [ -n "$port" ] && [ -n "$mport" ] && break
    kill -0 "${SPID[$m]}" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$port" ] || [ -z "$mport" ]; then
    log "$m: the server did not start:"
    cat "${DIR[$m]}/server.out" "${DIR[$m]}/server.err" >&2
    exit 1
  fi
  PORT[$m]=$port
  MPORT[$m]=$mport
  BASE_PROCS[$m]=1
  [[ ${FLAGS[$m]} == *prefork* ]] && BASE_PROCS[$m]=3   # master + --workers 2
  echo "time_utc,elapsed_s,phase,procs,threads,rss_kib,fds,zombies,conns,accepted_total,active" >"${DIR[$m]}/samples.csv"
  log "$m: pid ${SPID[$m]} on 127.0.0.1:$port (metrics :$mport): server ${FLAGS[$m]} ${COMMON_FLAGS[*]}"
}

# Stops the server of mode $1: SIGTERM, up to STOP_WAIT s, then SIGKILL of
# the server and of any descendant still running our server binary. Sets
# E_EXIT to the exit status (or "killed").
stop_server() {
  local m=$1 pid=${SPID[$1]} tree p i rc
  [ -n "$pid" ] || return 0
  tree=$(tree_pids "$pid")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_WAIT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$m: pid $pid still running ${STOP_WAIT}s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    E_EXIT[$m]=killed
  fi
  rc=0
  wait "$pid" 2>/dev/null || rc=$?
  [ -n "${E_EXIT[$m]:-}" ] || E_EXIT[$m]=$rc
  # Children and workers die with the server (PR_SET_PDEATHSIG); if one
  # did not, it is a bug worth seeing, and it must not be left behind.
  for p in $tree; do
    [ "$p" = "$pid" ] && continue
    for ((i = 0; i < 20; i++)); do
      [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$SERVER" ] || break
      sleep 0.1
    done
    if [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$SERVER" ]; then
      log "$m: descendant $p outlived the server by 2 s: SIGKILL"
      kill -KILL "$p" 2>/dev/null || true
      E_EXIT[$m]="${E_EXIT[$m]} (orphan $p)"
    fi
  done
  SPID[$m]=""
}

# ---------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------

# Runs a process in the background as load; remembers its PID and what it is.
spawn() {
  local what=$1
  shift
  "$@" &
  LOAD_PIDS+=($!)
  LOAD_WHAT[$!]=$what
}

# Repeated short client sessions for servers that serve one connection at a
# time: a persistent closed-loop or fixed-rate client would hold such a
# server for the whole run and starve everything queued behind it (which is
# what the mode promises, not a failure). Each session lasts 1 s; sessions
# start until $2 seconds have passed; exit codes go to $3.rcs, reports to
# $3-NNNN.json.
session_loop() {
  local addr=$1 secs=$2 base=$3 n=0 rc end
  shift 3
  end=$(( $(date +%s) + secs ))
  while [ "$(date +%s)" -lt "$end" ]; do
    n=$((n + 1))
    rc=0
    "$@" --addr "$addr" -d 1s -q --json "$(printf '%s-%04d.json' "$base" "$n")" >>"$base.txt" 2>&1 || rc=$?
    echo "$rc" >>"$base.rcs"
    sleep 1
  done
}

# Puts phase $2 ("warmup" or "soak") load on mode $1 for $3 seconds.
#   full:   closed loop (2 conns, niced so it does not starve the rest of the
#           machine), fixed rate 100 msgs/s on 2 conns, reconnect per message
#           at 40 msgs/s on 2 slots, and every hostile kind at once.
#   serial: closed loop and fixed rate as 1-second sessions, reconnect per
#           message at 20 msgs/s, hostile kinds one connection at a time (a
#           serial server holds a queued client while it serves another,
#           hostile or not, for up to the idle timeout: by design).
start_load() {
  local m=$1 phase=$2 secs=$3 d addr
  d=${DIR[$m]}/$phase
  mkdir -p "$d"
  addr=127.0.0.1:${PORT[$m]}
  if [ "${PROFILE[$m]}" = full ]; then
    spawn "$m closed $phase" nice -n 10 "$CLIENT" --addr "$addr" -c 2 -t 1 --timeout "$REPLY_TIMEOUT" \
      -d "${secs}s" -q --json "$d/closed.json" >"$d/closed.txt" 2>&1
    spawn "$m fixed $phase" "$CLIENT" --addr "$addr" -c 2 -t 1 --rate 100 --timeout "$REPLY_TIMEOUT" \
      -d "${secs}s" -q --json "$d/fixed.json" >"$d/fixed.txt" 2>&1
    spawn "$m reconnect $phase" "$CLIENT" --addr "$addr" -c 2 -t 1 --reconnect --rate 40 --connect-rate 40 \
      --timeout "$REPLY_TIMEOUT" -d "${secs}s" -q --json "$d/reconnect.json" >"$d/reconnect.txt" 2>&1
  else
    spawn "$m closed-sessions $phase" session_loop "$addr" "$secs" "$d/closed" nice -n 10 "$CLIENT" -c 1 -t 1 --timeout "$REPLY_TIMEOUT"
    spawn "$m fixed-sessions $phase" session_loop "$addr" "$secs" "$d/fixed" "$CLIENT" -c 1 -t 1 --rate 50 --timeout "$REPLY_TIMEOUT"
    spawn "$m reconnect $phase" "$CLIENT" --addr "$addr" -c 1 -t 1 --reconnect --rate 20 --connect-rate 20 \
      --timeout "$REPLY_TIMEOUT" -d "${secs}s" -q --json "$d/reconnect.json" >"$d/reconnect.txt" 2>&1
  fi
  spawn "$m hostile $phase" python3 "$HOSTILE" --addr "$addr" --duration "$secs" --idle-timeout "$IDLE_TIMEOUT" \
    --profile "${PROFILE[$m]}" --json "$d/hostile.json" >"$d/hostile.txt" 2>&1
}

# Waits for every load process (bounded: $1 s from now, then they are
# killed); records exit codes in <mode>/<phase>/<kind>.rc. While waiting,
# samples every mode each SAMPLE_SECS if $2 is "sample".
wait_load() {
  local limit=$(( $(date +%s) + $1 )) sample=$2 next pid m kind phase rc any
  next=$(( $(date +%s) + SAMPLE_SECS ))
  while :; do
    any=0
    for pid in "${LOAD_PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null && any=1 && break
    done
    [ "$any" = 1 ] || break
    if [ "$(date +%s)" -ge "$limit" ]; then
      log "load still running at its time limit: stopping it"
      kill_load
      break
    fi
    if [ "$sample" = sample ] && [ "$(date +%s)" -ge "$next" ]; then
      for m in "${MODES[@]}"; do
        take_sample "$m"
        write_sample "$m" load
        track_peaks "$m"
      done
      while [ "$next" -le "$(date +%s)" ]; do next=$((next + SAMPLE_SECS)); done
    fi
    sleep 1
  done
  for pid in "${LOAD_PIDS[@]}"; do
    rc=0
    wait "$pid" 2>/dev/null || rc=$?
    read -r m kind phase <<<"${LOAD_WHAT[$pid]}"
    echo "$rc" >"${DIR[$m]}/$phase/$kind.rc"
  done
  LOAD_PIDS=()
}

track_peaks() {
  local m=$1
  [ "$LAST_RSS" -gt "${PEAK_RSS[$m]:-0}" ] && PEAK_RSS[$m]=$LAST_RSS
  [ "$LAST_FDS" -gt "${PEAK_FDS[$m]:-0}" ] && PEAK_FDS[$m]=$LAST_FDS
  [ "$LAST_CONNS" -gt "${PEAK_CONNS[$m]:-0}" ] && PEAK_CONNS[$m]=$LAST_CONNS
  return 0
}

# Stops every load process still running, with its children (session loops
# run clients), by PID.
kill_load() {
  local pid p
  for pid in "${LOAD_PIDS[@]}"; do
    for p in $(tree_pids "$pid"); do
      kill -TERM "$p" 2>/dev/null || true
    done
  done
}

# ---------------------------------------------------------------------------
# Settling
# ---------------------------------------------------------------------------

# Polls every mode once a second until it holds no connection and its
# processes are back to BASE_PROCS, and (phase "end") its fds and threads are
# back to the baseline, or (phase "start") they are the same two samples in a
# row; at most SETTLE_MAX s. Records the last sample of each mode as the
# start or end figures.
settle_all() {
  local phase=$1 t0 m done_all prev ok
  declare -A settled=() prevkey=()
  t0=$(date +%s)
  while :; do
    done_all=1
    for m in "${MODES[@]}"; do
      [ -n "${settled[$m]:-}" ] && continue
      take_sample "$m"
      ok=0
      if [ "$LAST_CONNS" = 0 ] && [ "$LAST_PROCS" = "${BASE_PROCS[$m]}" ] && [ "$LAST_ZOMB" = 0 ]; then
        if [ "$phase" = start ]; then
          prev=${prevkey[$m]:-}
          prevkey[$m]="$LAST_FDS $LAST_THREADS"
          [ "$prev" = "${prevkey[$m]}" ] && ok=1
        elif [ "$LAST_FDS" = "${S_FDS[$m]}" ] && [ "$LAST_THREADS" = "${S_THREADS[$m]}" ]; then
          ok=1
        fi
      fi
      if [ "$ok" = 1 ] || [ $(( $(date +%s) - t0 )) -ge "$SETTLE_MAX" ]; then
        settled[$m]=$(( $(date +%s) - t0 ))
        [ "$ok" = 1 ] || settled[$m]="not settled after ${SETTLE_MAX}"
        write_sample "$m" "$phase"
        if [ "$phase" = start ]; then
          S_PROCS[$m]=$LAST_PROCS S_THREADS[$m]=$LAST_THREADS S_RSS[$m]=$LAST_RSS S_FDS[$m]=$LAST_FDS
          S_ACC[$m]=$LAST_ACC
          PEAK_RSS[$m]=$LAST_RSS PEAK_FDS[$m]=$LAST_FDS PEAK_CONNS[$m]=$LAST_CONNS
          [ "$ok" = 1 ] || log "$m: baseline not steady after ${SETTLE_MAX}s (conns $LAST_CONNS, procs $LAST_PROCS)"
        else
          E_PROCS[$m]=$LAST_PROCS E_THREADS[$m]=$LAST_THREADS E_RSS[$m]=$LAST_RSS E_FDS[$m]=$LAST_FDS
          E_ZOMB[$m]=$LAST_ZOMB E_CONNS[$m]=$LAST_CONNS E_ACC[$m]=$LAST_ACC E_SETTLE[$m]=${settled[$m]}
        fi
      else
        done_all=0
      fi
    done
    [ "$done_all" = 1 ] && break
    sleep 1
  done
}

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

# Merges the client reports of mode $1 (both phases; `client merge`) and
# prints "messages soak_messages conns errors error_kinds client_failures"
# plus the hostile summary fields, as shell-safe key=value lines.
mode_figures() {
  local m=$1 d=${DIR[$1]} jsons=() rcs=()
  jsons=("$d"/warmup/*.json "$d"/soak/*.json)
  local clients=()
  for f in "${jsons[@]}"; do
    [[ $f == */hostile.json ]] || clients+=("$f")
  done
  if [ ${#clients[@]} -gt 0 ]; then
    "$CLIENT" merge "${clients[@]}" --json "$d/clients-merged.json" >"$d/clients-merged.txt" 2>&1 || true
  fi
  rcs=("$d"/*/*.rc "$d"/*/*.rcs)
  python3 - "$d" "${PROFILE[$m]}" "${rcs[@]}" <<'PY'
import glob, json, os, sys
d, profile, rc_files = sys.argv[1], sys.argv[2], sys.argv[3:]
def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def count(n):
    return f"{n:,}"
merged = load(os.path.join(d, "clients-merged.json"))
soak = [load(p) for p in glob.glob(os.path.join(d, "soak", "*.json")) if not p.endswith("hostile.json")]
soak_msgs = sum(r["messages"] for r in soak if r)
# Client exit codes: continuous clients (.rc, one line) and sessions (.rcs).
bad_rc = 0
runs = 0
for p in rc_files:
    name = os.path.basename(p)
    if name.startswith("hostile"):
        continue
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                runs += 1
                bad_rc += line.strip() != "0"
# A missing report (a client that crashed or never wrote one) is a failure.
expected = len([p for p in rc_files if p.endswith(".rc") and not os.path.basename(p).startswith("hostile")
                and not p.endswith("-sessions.rc")])
expected += sum(1 for p in rc_files if p.endswith(".rcs") for l in open(p, encoding="utf-8") if l.strip())
have = sum(1 for p in glob.glob(os.path.join(d, "*", "*.json")) if not p.endswith("hostile.json") and load(p))
missing = max(0, expected - have)
errors = merged["errors"] if merged else {}
err_total = merged["errors_total"] if merged else 0
err_kinds = " ".join(f"{k} {v}" for k, v in sorted(errors.items()) if v) or "none"
# Hostile clients: outcomes per kind, both phases added.
names = {"slowloris_alive": "slowloris-alive", "slowloris_cut": "slowloris-cut", "idle": "idle",
         "reset": "reset", "hit_and_run": "hit-and-run 1 MiB"}
outcomes, cuts, h_unexp, h_bad_rc, h_conns = {}, {}, 0, 0, 0
for phase in ("warmup", "soak"):
    h = load(os.path.join(d, phase, "hostile.json"))
    rcp = os.path.join(d, phase, "hostile.rc")
    if os.path.exists(rcp) and open(rcp, encoding="utf-8").read().strip() != "0":
        h_bad_rc += 1
    if not h:
        h_bad_rc += 1
        continue
    h_unexp += h["unexpected"]
    h_conns += h["connections"]
    for kind, o in h["outcomes"].items():
        for k, v in o.items():
            outcomes.setdefault(kind, {}).setdefault(k, 0)
            outcomes[kind][k] += v
    if phase == "soak":
        cuts = h.get("cut_after_secs", {})
parts = []
for kind, label in names.items():
    o = outcomes.get(kind, {})
    if not o:
        continue
    inner = ", ".join(f"{k} {count(v)}" for k, v in sorted(o.items(), key=lambda kv: -kv[1]))
    c = cuts.get(kind)
    if c:
        inner += f" ({c['min']:.2f}-{c['max']:.2f} s)"
    parts.append(f"{label}: {inner}")
def ms(us):
    return f"{us / 1000:,.0f}" if us >= 10_000 else f"{us / 1000:.1f}"
lat = merged["latency"] if merged else None
if lat and lat.get("count"):
    print(f"F_LAT='{ms(lat['percentiles_us'].get('p99', 0))} / {ms(lat['max_us'])}'")
else:
    print("F_LAT='-'")
print(f"F_MSGS={soak_msgs}")
print(f"F_CONNS={merged['conns_established'] if merged else 0}")
print(f"F_ERR={err_total}")
print(f"F_ERR_KINDS='{err_kinds}'")
print(f"F_BAD_RC={bad_rc}")
print(f"F_RUNS={runs}")
print(f"F_MISSING={missing}")
print(f"F_H_CONNS={h_conns}")
print(f"F_H_UNEXP={h_unexp}")
print(f"F_H_BAD={h_bad_rc}")
print(f"F_H_DETAIL='{'; '.join(parts)}'")
PY
}

# A count with thousands separators (whatever the locale).
fmt() { sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|[^0-9]\)/\1,\2\3/' -e 'ta' <<<"$1"; }

# Writes the report (Markdown) for every mode; sets FAILED.
report() {
  local m verdict why reason allowed growth served md=$OUT/report.md
  local commit branch dirty cpu kernel
  commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  branch=$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
  dirty=""
  git diff --quiet HEAD -- server client common src 2>/dev/null || dirty=" (with uncommitted changes)"
  cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
  kernel=$(uname -r)
  FAILED=0
  {
    echo "<!-- soak:begin (generated by scripts/soak.sh; replace this block with a newer run's) -->"
    echo "Command: \`scripts/soak.sh $MINUTES\` (${DURATION} s of load per mode, all modes at once, after a ${WARMUP} s warm-up)."
    echo "Date: $(date -u +'%Y-%m-%d %H:%M UTC'). Commit: \`$commit\` on \`$branch\`$dirty."
    echo "Machine: $(nproc) cores ($cpu), Linux $kernel, shared with other builds. Servers: \`${COMMON_FLAGS[*]}\`."
    echo
    echo "| mode | load | RSS KiB start → end | fds start → end | threads start → end | settled | conns served | client msgs | client errors | hostile conns (unexpected) | verdict |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    for m in "${MODES[@]}"; do
      eval "$(mode_figures "$m")"
      why=()
      allowed=$(( S_RSS[$m] * RSS_NOISE_PCT / 100 ))
      [ "$allowed" -lt "$RSS_NOISE_KIB" ] && allowed=$RSS_NOISE_KIB
      growth=$(( E_RSS[$m] - S_RSS[$m] ))
      [ "${E_ALIVE[$m]}" = yes ] || why+=("server died")
      [ "${E_FDS[$m]}" = "${S_FDS[$m]}" ] || why+=("fds ${S_FDS[$m]} → ${E_FDS[$m]}")
      [ "$growth" -le "$allowed" ] || why+=("RSS +${growth} KiB > ${allowed}")
      [ "${E_THREADS[$m]}" = "${S_THREADS[$m]}" ] || why+=("threads ${S_THREADS[$m]} → ${E_THREADS[$m]}")
      [ "${E_PROCS[$m]}" = "${S_PROCS[$m]}" ] || why+=("processes ${S_PROCS[$m]} → ${E_PROCS[$m]}")
      [ "${E_ZOMB[$m]}" = 0 ] || why+=("${E_ZOMB[$m]} zombies")
      [ "${E_CONNS[$m]}" = 0 ] || why+=("${E_CONNS[$m]} connections left")
      [ "$F_ERR" = 0 ] || why+=("client errors")
      [ "$F_BAD_RC" = 0 ] || why+=("$F_BAD_RC client runs failed")
      [ "$F_MISSING" = 0 ] || why+=("$F_MISSING client reports missing")
      [ "$F_H_UNEXP" = 0 ] || why+=("$F_H_UNEXP unexpected hostile outcomes")
      [ "$F_H_BAD" = 0 ] || why+=("hostile script failed")
      [ "${E_EXIT[$m]}" = 0 ] || why+=("exit ${E_EXIT[$m]} on SIGTERM")
      if [ ${#why[@]} -eq 0 ]; then
        verdict=PASS
      else
        verdict="**FAIL**: ${why[0]}"
        for reason in "${why[@]:1}"; do verdict+="; $reason"; done
        FAILED=1
      fi
      served=""
      [ -n "${E_ACC[$m]}" ] && [ -n "${S_ACC[$m]}" ] && served=$(fmt $(( E_ACC[$m] - S_ACC[$m] )))
      printf '| %s | %s | %s → %s (%+d) | %s → %s | %s → %s | %s | %s | %s | %s | %s (%s) | %s |\n' \
        "$m" "${PROFILE[$m]}" "$(fmt "${S_RSS[$m]}")" "$(fmt "${E_RSS[$m]}")" "$growth" \
        "${S_FDS[$m]}" "${E_FDS[$m]}" "${S_THREADS[$m]}" "${E_THREADS[$m]}" "$(settle_text "$m")" \
        "${served:-?}" "$(fmt "$F_MSGS")" "$F_ERR_KINDS" "$(fmt "$F_H_CONNS")" "$F_H_UNEXP" "$verdict"
      echo "$m|$F_H_DETAIL|${PEAK_RSS[$m]:-}|${PEAK_FDS[$m]:-}|${PEAK_CONNS[$m]:-}|${E_EXIT[$m]}|$F_LAT" >>"$OUT/.details"
    done
    echo
    echo "Under load (samples every ${SAMPLE_SECS} s, <mode>/samples.csv; reply latency of all normal clients, fixed-rate"
    echo "ones from the scheduled send time) and hostile outcomes (warm-up and soak; cut times from the last byte, idle from connect):"
    echo
    echo "| mode | server flags | peak RSS KiB | peak fds | peak conns | reply latency ms p99 / max | exit on SIGTERM | hostile outcomes |"
    echo "|---|---|---|---|---|---|---|---|"
    while IFS='|' read -r m detail prss pfds pconns ex lat; do
      # shellcheck disable=SC2016  # the backquotes are Markdown
      printf '| %s | `%s` | %s | %s | %s | %s | %s | %s |\n' "$m" "${FLAGS[$m]}" "$(fmt "${prss:-0}")" "${pfds:-?}" \
        "${pconns:-?}" "$lat" "$ex" "$detail"
    done <"$OUT/.details"
    rm -f "$OUT/.details"
    echo "<!-- soak:end -->"
  } >"$md"
  cat "$md"
}

settle_text() {
  case ${E_SETTLE[$1]} in
    not*) echo "**${E_SETTLE[$1]} s**" ;;
    *) echo "${E_SETTLE[$1]} s" ;;
  esac
}

# ---------------------------------------------------------------------------
# Cleanup: whatever happens, no server or load process is left running.
# ---------------------------------------------------------------------------

cleanup() {
  local m
  trap - EXIT INT TERM
  kill_load
  for m in "${MODES[@]}"; do
    [ -n "${SPID[$m]:-}" ] && stop_server "$m"
  done
  return 0
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

main() {
  local entry label flags profile m
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  if [ -z "${SOAK_NO_BUILD:-}" ]; then
    log "building release binaries"
    cargo build --release --bin server --bin client
  fi
  for entry in "${MODE_TABLE[@]}"; do
    IFS='|' read -r label flags profile <<<"$entry"
    if [ -n "${SOAK_MODES:-}" ] && [[ " $SOAK_MODES " != *" $label "* ]]; then
      continue
    fi
    MODES+=("$label")
    FLAGS[$label]=$flags
    PROFILE[$label]=$profile
    DIR[$label]=$OUT/${label//\//-}
    mkdir -p "${DIR[$label]}"
  done
  [ ${#MODES[@]} -gt 0 ] || { echo "SOAK_MODES matches no mode" >&2; exit 2; }
  log "results in $OUT; ${#MODES[@]} modes at once, ${DURATION}s of load each after ${WARMUP}s of warm-up; open files $(ulimit -n)"

  T0=$(date +%s)
  for m in "${MODES[@]}"; do start_server "$m"; done

  log "warm-up: ${WARMUP}s"
  for m in "${MODES[@]}"; do start_load "$m" warmup "$WARMUP"; done
  wait_load $((WARMUP + 60)) no
  settle_all start
  for m in "${MODES[@]}"; do
    log "$m: baseline RSS ${S_RSS[$m]} KiB, ${S_FDS[$m]} fds, ${S_THREADS[$m]} threads, ${S_PROCS[$m]} processes"
  done

  log "soak: ${DURATION}s of load"
  for m in "${MODES[@]}"; do start_load "$m" soak "$DURATION"; done
  wait_load $((DURATION + 90)) sample

  log "load stopped; settling (at most ${SETTLE_MAX}s)"
  settle_all end
  for m in "${MODES[@]}"; do
    E_ALIVE[$m]=no
    kill -0 "${SPID[$m]}" 2>/dev/null && [ "$(readlink "/proc/${SPID[$m]}/exe")" = "$SERVER" ] && E_ALIVE[$m]=yes
    stop_server "$m"
  done

  report
  log "results in $OUT (report.md, <mode>/samples.csv, client and hostile reports); total $(( $(date +%s) - T0 ))s"
  if [ "$FAILED" != 0 ]; then
    log "FAILED: at least one mode did not pass (see the verdict column)"
    exit 1
  fi
  log "every mode passed"
}

main
