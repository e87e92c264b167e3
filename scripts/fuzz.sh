#!/usr/bin/env bash
# Fuzzes the connection state machine (fuzz/fuzz_targets/conn.rs) for a
# while: `scripts/fuzz.sh [seconds]` (default 60). Installs cargo-fuzz if it
# is missing. Builds with the machine's stable toolchain: cargo-fuzz passes
# nightly-only flags (-Zsanitizer=address), which RUSTC_BOOTSTRAP=1 lets the
# stable compiler accept; the sanitizer runtimes ship with stable's std.
# New inputs the run finds go to a scratch copy of the corpus, so a run
# never changes the committed one (see fuzz/README.md to grow it).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
case $seconds in
  ''|*[!0-9]*) echo "usage: scripts/fuzz.sh [seconds]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

work=fuzz/target/corpus-run
rm -rf "$work"
mkdir -p "$work"
cp fuzz/corpus/conn/* "$work"/
export RUSTC_BOOTSTRAP=1
# Starts from the committed corpus (copied above). -rss_limit_mb: one
# script may hold a few MiB of payload.
cargo fuzz run conn "$work" -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1
echo "fuzz: $seconds s without a failure; $(find "$work" -type f | wc -l) inputs in $work"
