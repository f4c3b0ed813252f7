#!/usr/bin/env bash
# Where the CPU goes during target 2's runs: system-wide `perf record -g` samples of 20 s, one 30 s
# into the 1M run and five during the 10M run (60, 240, 480, 720 and 960 s in), then the share of
# each thread (by name) and the top symbols of Postgres and of the relay's threads, per sample.
# Run beside `TARGETS=2 bench/issue14/run-all.sh` in a second shell (as root, or with
# kernel.perf_event_paranoid <= 0).
#
#   bench/issue14/perf-phases.sh [out-dir]      # default /tmp/notify-relay-perf
set -euo pipefail
OUT=${1:-/tmp/notify-relay-perf}
mkdir -p "$OUT"
command -v perf >/dev/null || { echo "perf-phases: perf is not installed (Debian: linux-perf)" >&2; exit 2; }

running() { pgrep -f "loadgen --notifications $1 " >/dev/null; }
sample() { perf record -a -g -F 199 -o "$OUT/$1.data" -- sleep 20 2>/dev/null; }
report() {
  echo "== $1: CPU by thread"
  perf report -i "$OUT/$1.data" --no-children --sort comm -g none --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8
  echo "-- postgres, top symbols"
  perf report -i "$OUT/$1.data" --no-children --comm postgres --sort sym -g none --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -12
  echo "-- the relay's threads, top symbols"
  perf report -i "$OUT/$1.data" --no-children --comm 'notify-relay,log,actix-rt|system' --sort sym -g none --stdio 2>/dev/null |
    grep -E '^ +[0-9]' | head -12
}

until running 1000000; do sleep 1; done
sleep 30
sample 1m
report 1m
until running 10000000; do sleep 1; done
start=$(date +%s)
for at in 60 240 480 720 960; do
  while [ $(($(date +%s) - start)) -lt "$at" ]; do sleep 1; done
  running 10000000 || break
  sample "10m-$at"
  report "10m-$at"
done
