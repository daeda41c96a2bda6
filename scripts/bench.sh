#!/usr/bin/env bash
# The benchmark series of docs/BENCHMARKS.md: the machine, then the
# documented commands, each repeated by `--runs` (medians with min–max, ratios
# paired per run), on classic and on quorum queues: warren against the
# matched and the lean bare-lapin loops, p99 at a fixed 1,000 events/s, what
# each of warren's additions costs the lean loop, warren at other prefetch
# counts than its default, and the HTTP ingress through a
# `warren ingress` started here (on $INGRESS_LISTEN, default 127.0.0.1:8597,
# which must be free). Needs the broker of the settings (default
# 127.0.0.1:5672) on this machine (its CPU is read from /proc), curl and a
# release build of warren and warren-bench (`cargo build --release` at the
# root builds both); run it from a directory whose warren.toml/.env (if any)
# are the settings you want to bench. SERIES=short skips the ingress (about
# 40 minutes; P99_DURATION=10s P99_RUNS=5 make it 15).
#
#   cargo build --release && scripts/bench.sh | tee bench.log
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
warren="${WARREN:-$root/target/release/warren}"
bench="${WARREN_BENCH:-$root/target/release/warren-bench}"
for bin in "$warren" "$bench"; do
  [[ -x "$bin" ]] || { echo "no $bin: run cargo build --release first" >&2; exit 1; }
done
events="${EVENTS:-20000}"
runs="${RUNS:-7}"
# p99 at 1,000 events/s: the broker's pauses (up to tens of milliseconds,
# quorum queues most) decide single runs, so many long ones.
p99_duration="${P99_DURATION:-30s}"
p99_runs="${P99_RUNS:-9}"

# The broker's Erlang VM, for its CPU per event: BROKER_PID, or the one
# beam.smp that is not a node of the tests' cluster (scripts/cluster).
broker="${BROKER_PID:-}"
if [[ -z "$broker" ]]; then
  for pid in $(pgrep beam.smp 2>/dev/null); do
    grep -qz '^RABBITMQ_NODENAME=warren-n' "/proc/$pid/environ" 2>/dev/null || { broker=$pid; break; }
  done
fi
broker_pid=()
[[ -n "$broker" ]] && broker_pid=(--broker-pid "$broker")

echo "## machine"
echo "nproc: $(nproc)"
grep -m1 'model name' /proc/cpuinfo
grep -m1 MemTotal /proc/meminfo
echo "kernel: $(uname -r)"
echo "rabbitmq: $(rabbitmqctl version 2>/dev/null || echo unknown) (pid ${broker:-unknown})"
echo "warren: $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

run() {
  echo
  echo "## warren-bench $*"
  echo '```'
  "$bench" "$@" 2>/dev/null | grep -v '^run '
  echo '```'
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
}

for queues in classic quorum; do
  run --baseline --events "$events" --runs "$runs" --queue-type "$queues" "${broker_pid[@]}"
  run --baseline --rate 1000 --duration "$p99_duration" --runs "$p99_runs" --queue-type "$queues"
  run --additions --events "$events" --runs "$runs" --queue-type "$queues" "${broker_pid[@]}"
  run --prefetches 128,256,1024 --events "$events" --runs "$runs" --queue-type "$queues" "${broker_pid[@]}"
done
[[ "${SERIES:-}" == short ]] && exit 0

# The ingress: `warren ingress` in its own process on the same machine,
# driven over 64 keep-alive connections. Both publish to an exchange of
# their own, so no other queue gets copies of the bench events.
export WARREN_TOPOLOGY__EXCHANGE="${BENCH_EXCHANGE:-warren-bench}"
listen="${INGRESS_LISTEN:-127.0.0.1:8597}"
WARREN_INGRESS__LISTEN="$listen" "$warren" ingress 2>/dev/null &
ingress=$!
trap 'kill "$ingress" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://$listen/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://$listen/readyz" >/dev/null || { echo "warren ingress is not ready on $listen" >&2; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$ingress/stat"; }
before=$(ticks)
run --ingress "http://$listen" --baseline --events "$events" --runs 5
requests=$((events * 5))
echo "ingress process CPU: $(( ($(ticks) - before) * 1000000 / $(getconf CLK_TCK) / requests )) µs per request ($requests requests, user + system)"
