#!/usr/bin/env bash
# Client instructions per event, counted by valgrind's callgrind:
# deterministic to a fraction of a percent, so it shows the effect of a
# change that wall-clock runs on a shared 2-core machine cannot resolve.
# Runs `warren bench` under callgrind with one profile dump per run and
# prints user-space instructions (Ir) per event of each. Counts exclude the
# kernel and the broker; the first dump also holds process start-up (~1k
# Ir/event at the default 5000 events).
#
# By default the bench options are `--baseline --runs 2` (warren, the
# matched baseline and the lean loop, each twice, in turn); pass others after
# the event count, e.g. `--additions` for the lean loop with each of
# warren's additions.
#
# It needs the symbols the release build strips: build the `profiling`
# profile (the release build with symbols) first.
#
#   cargo build --profile profiling && scripts/bench-callgrind.sh [EVENTS] [bench options]
#   callgrind_annotate --inclusive=no <dir>/callgrind.out.<pid>.4 | head -40   # where one run's go
set -euo pipefail
events="${1:-5000}"
shift || true
(($#)) || set -- --baseline --runs 2
warren="${WARREN:-$(cd "$(dirname "$0")/.." && pwd)/target/profiling/warren}"
[[ -x "$warren" ]] || { echo "no $warren: run cargo build --profile profiling first" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind not found" >&2; exit 1; }

dir="$(mktemp -d -t warren-callgrind.XXXXXX)"
cd "$dir"
valgrind --tool=callgrind --dump-after='*run_line*' \
  "$warren" bench --events "$events" "$@" 2>/dev/null | grep '^run ' | awk '{print $3}' > runs.txt
ls callgrind.out.*.1 >/dev/null 2>&1 ||
  { echo "no profile dumps in $dir: was $warren built with its symbols (cargo build --profile profiling)?" >&2; exit 1; }
i=0
while read -r kind; do
  i=$((i + 1))
  f=$(ls callgrind.out.*."$i")
  total=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  printf 'dump %d (%s): %d Ir/event\n' "$i" "$kind" "$((total / events))"
done < runs.txt
echo "profiles in $dir"
