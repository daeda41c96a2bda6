#!/usr/bin/env bash
# CPU and wake-ups of an idle warren process: starts `warren ARGS…` (default
# `run`) against the configured broker, waits 8 s for it to settle, then
# reads its threads' run time (/proc/PID/task/*/schedstat, nanoseconds) and
# voluntary context switches over SECONDS (default 30), and stops it.
#
#   cargo build --release -p warren && scripts/idle-cpu.sh 30 run
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/test scripts/idle-cpu.sh 30 run --relay
set -euo pipefail
secs="${1:-30}"
shift || true
(($#)) || set -- run
warren="${WARREN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/warren}"
[[ -x "$warren" ]] || { echo "no $warren: run cargo build --release -p warren first" >&2; exit 1; }
log="$(mktemp -t warren-idle.XXXXXX.log)"
"$warren" "$@" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
sleep 8
kill -0 "$pid" 2>/dev/null || { echo "warren $* exited; its log: $log" >&2; cat "$log" >&2; exit 1; }
run_ns() { cat /proc/"$pid"/task/*/schedstat | awk '{ns += $1} END {print ns}'; }
wakeups() { cat /proc/"$pid"/task/*/status | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n}'; }
ns0=$(run_ns) w0=$(wakeups)
sleep "$secs"
ns1=$(run_ns) w1=$(wakeups)
awk -v ns=$((ns1 - ns0)) -v w=$((w1 - w0)) -v s="$secs" -v cmd="warren $*" \
  'BEGIN {printf "%s: %.3f%% of a core, %.1f wake-ups/s over %d s idle\n", cmd, ns / s / 1e7, w / s, s}'
