#!/usr/bin/env bash
# Client instructions per event, warren vs the bare-lapin baseline, counted by
# valgrind's callgrind: deterministic to a fraction of a percent, so it shows
# the effect of a change that wall-clock runs on a shared 2-core machine
# cannot resolve. Runs `warren bench --baseline --runs 2` (warren, baseline,
# baseline, warren) under callgrind with one profile dump per run, and prints
# user-space instructions (Ir) per event of each. Counts exclude the kernel
# and the broker; the first dump also holds process start-up (~1k Ir/event at
# the default 5000 events).
#
#   cargo build --release && scripts/bench-callgrind.sh [EVENTS] [extra bench options]
#   callgrind_annotate --inclusive=no <dir>/callgrind.out.<pid>.4 | head -40   # where warren's go
set -euo pipefail
events="${1:-5000}"
shift || true
warren="${WARREN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/warren}"
[[ -x "$warren" ]] || { echo "no $warren: run cargo build --release first" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind not found" >&2; exit 1; }

dir="$(mktemp -d -t warren-callgrind.XXXXXX)"
cd "$dir"
valgrind --tool=callgrind --dump-after='*run_line*' \
  "$warren" bench --baseline --events "$events" --runs 2 "$@" 2>/dev/null | grep '^run ' | cut -c1-30
for i in 1 2 3 4; do
  f=$(ls callgrind.out.*."$i")
  total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "dump $i ($(sed -n "${i}p" <<<"warren
baseline
baseline
warren")): $((total / events)) Ir/event"
done
echo "profiles in $dir"
