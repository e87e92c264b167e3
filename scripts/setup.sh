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
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -eq 0 ]; then
  echo "setup: everything is installed"
  exit 0
fi
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "setup: installing ${need[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
