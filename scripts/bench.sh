#!/usr/bin/env bash
# The benchmark series of docs/BENCHMARKS.md: the machine, then the
# documented commands, each repeated by `--runs` (medians with min–max), the
# last one through a `warren ingress` started here (on $INGRESS_LISTEN,
# default 127.0.0.1:8597, which must be free). Needs the broker of the
# settings (default 127.0.0.1:5672), curl and a release build; run it from a
# directory whose warren.toml/.env (if any) are the settings you want to
# bench.
#
#   cargo build --release && scripts/bench.sh | tee bench.log
set -euo pipefail
warren="${WARREN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/warren}"
[[ -x "$warren" ]] || { echo "no $warren: run cargo build --release first" >&2; exit 1; }

echo "## machine"
echo "nproc: $(nproc)"
grep -m1 'model name' /proc/cpuinfo
grep -m1 MemTotal /proc/meminfo
echo "kernel: $(uname -r)"
echo "rabbitmq: $(rabbitmqctl version 2>/dev/null || echo unknown)"
echo "warren: $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

run() {
  echo
  echo "## warren bench $*"
  echo '```'
  "$warren" bench "$@" 2>/dev/null
  echo '```'
  echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# 7 runs: a broker stall in one run of three (seen as a p99 of 50 ms or more)
# moves a 3-run median by itself, and single CPU ratios spread ±10 % on a
# shared 2-core machine.
run --baseline --events 50000 --runs 7
run --rate 1000 --duration 20s --runs 3
run --baseline --rate 1000 --duration 20s --runs 3

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
run --ingress "http://$listen" --baseline --events 20000 --runs 5
requests=$((20000 * 5))
echo "ingress process CPU: $(( ($(ticks) - before) * 1000000 / $(getconf CLK_TCK) / requests )) µs per request ($requests requests, user + system)"
