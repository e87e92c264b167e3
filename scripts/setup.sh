#!/usr/bin/env bash
# What the tests, the soak and the benchmarks need besides a Rust toolchain,
# installed from Debian's packages when missing (run as root, or with sudo
# available). Idempotent: installs nothing when everything is there.
#
#   gcc       the fault-injection shim of the end-to-end tests, and the C
#             epoll baseline of the benchmark, are compiled at run time
#   g++       libFuzzer (cargo-fuzz, scripts/fuzz.sh)
#   iproute2  `ss`: the slow-reader test and the soak read socket counters
#   python3   the independent decoder of the client's interval logs
#             (tests/e2e/client/hlog_decode.py), the soak's hostile clients
#   redis-tools   redis-cli and redis-benchmark: the kv example's tests and benchmark
#   redis-server  the reference the kv example's replies are checked against (tests, on a
#                 unix socket of their own) and its benchmark baseline
#   curl, wrk     the http_hello example's tests and benchmark
#   nginx         the http_hello benchmark's baseline
# Installing redis-server or nginx must not start them as system services (on
# ports 6379 and 80): Debian's maintainer scripts ask /usr/sbin/policy-rc.d,
# so while installing, one that says no is put there if none exists.
#   systemd   `systemd-socket-activate`: socket activation in every mode
#             (it runs without systemd as PID 1)
#   haproxy   servers behind a real HAProxy (tests/e2e/haproxy.rs,
#             scripts/haproxy.sh)
set -euo pipefail
need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -eq 0 ]; then
  echo "setup: everything is installed"
  exit 0
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "setup: installing ${need[*]}"
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# scripts/setup.sh: no service starts while it installs packages\nexit 101\n' |
    "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod +x "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
