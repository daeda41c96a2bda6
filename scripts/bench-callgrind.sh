#!/usr/bin/env bash
# Client instructions per event, counted by valgrind's callgrind:
# deterministic to a fraction of a percent, so it shows the effect of a
# change that wall-clock runs on a shared 2-core machine cannot resolve.
# Runs `warren-bench` under callgrind twice, at EVENTS and at 4 × EVENTS
# per run, with one profile dump per run, and prints each run's
# user-space instructions (Ir) per event as the difference of the two
# divided by the difference in events: what one more event costs. What a
# run pays once (process start-up, and its connections: lapin zeroes two
# buffers of 32 frames of frame_max, 4 MiB each at RabbitMQ's default, per
# connection) falls out, and is printed beside it. Counts exclude the
# kernel and the broker.
#
# By default the bench options are `--baseline --runs 2` (warren, the
# matched baseline and the lean loop, each twice, in turn); pass others after
# the event count, e.g. `--additions` for the lean loop with each of
# warren's additions.
#
# It needs the symbols the release build strips: build the `profiling`
# profile (the release build with symbols) first.
#
#   cargo build --profile profiling -p warren-bench && scripts/bench-callgrind.sh [EVENTS] [bench options]
#   callgrind_annotate --inclusive=no <dir>/large/callgrind.out.<pid>.4 | head -40   # where one run's go
set -euo pipefail
events="${1:-5000}"
shift || true
(($#)) || set -- --baseline --runs 2
bench="${WARREN_BENCH:-$(cd "$(dirname "$0")/.." && pwd)/target/profiling/warren-bench}"
[[ -x "$bench" ]] || { echo "no $bench: run cargo build --profile profiling -p warren-bench first" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind not found" >&2; exit 1; }

dir="$(mktemp -d -t warren-callgrind.XXXXXX)"

# profile SIZE EVENTS: one callgrind run into $dir/SIZE; the loops' order in runs.txt.
profile() {
  mkdir -p "$dir/$1"
  (cd "$dir/$1" &&
    valgrind --tool=callgrind --compress-strings=no --compress-pos=no --dump-after='*run_line*' \
      "$bench" --events "$2" "${@:3}" 2>/dev/null | grep '^run ' | awk '{print $3}' > runs.txt)
  ls "$dir/$1"/callgrind.out.*.1 >/dev/null 2>&1 ||
    { echo "no profile dumps in $dir/$1: was $bench built with its symbols (cargo build --profile profiling -p warren-bench)?" >&2; exit 1; }
}

# total SIZE I: the instructions of dump I.
total() {
  callgrind_annotate "$(ls "$dir/$1"/callgrind.out.*."$2")" 2>/dev/null |
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}

profile small "$events" "$@"
profile large "$((4 * events))" "$@"
i=0
while read -r kind; do
  i=$((i + 1))
  small=$(total small "$i")
  large=$(total large "$i")
  per_event=$(((large - small) / (3 * events)))
  once=$(((small - per_event * events) / 1000000))
  printf 'dump %d (%s): %d Ir/event, %d M Ir once per run\n' "$i" "$kind" "$per_event" "$once"
done < "$dir/small/runs.txt"
echo "profiles in $dir/small and $dir/large"
