#!/usr/bin/env bash
# Issue 14, target 5: latency under steady single-row load. pgbench commits one notification per
# transaction (autocommit INSERT, created_at = clock_timestamp()) at RATE/s for SECONDS_PER_RUN s
# into loadgen's fresh database while the release relay delivers to the Expo emulator; loadgen
# prints p50/p90/p99/p99.9/max from each row's created_at to the emulator's receipt, pgbench's
# own report (tps, latency, schedule lag, skipped / late transactions), duplicates and the relay's
# peak RSS. Then bench/latency/stages.py splits the latency into the pipeline's stages.
#
#   bench/latency/run.sh                                     # 2,000/s for 60 s
#   RATE=200 SECONDS_PER_RUN=5 bench/latency/run.sh          # a quick look
#   bench/latency/run.sh --relay-env NOTIFY__PROVIDERS__EXPO__FLUSH_AFTER_MS=1   # try a setting
#   NOTIFY_RELAY_BIN=/tmp/notify-relay-before bench/latency/run.sh   # another build (no cargo build)
#   bench/latency/producer-alone.sh                          # the same pgbench load, no relay
#
# The load of the machine is printed before and after: on a shared machine, compare runs made
# back to back only.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/services.sh
ensure_pgbench
RATE=${RATE:-2000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-60}
OUT=${OUT:-/tmp/notify-relay-latency}
mkdir -p "$OUT"
echo "load before: $(uptime)" >&2
ARGS=(--producer pgbench --rate "$RATE" --duration-secs "$SECONDS_PER_RUN"
  --relay-log "$OUT/relay.log" --samples-file "$OUT/samples.csv" "$@")
if [ -n "${NOTIFY_RELAY_BIN:-}" ]; then
  ensure_postgres
  ensure_redis
  DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres} \
    "$NOTIFY_RELAY_BIN" loadgen "${ARGS[@]}" | tee "$OUT/summary.txt"
else
  bench/run.sh "${ARGS[@]}" | tee "$OUT/summary.txt"
fi
echo "load after: $(uptime)" >&2
bench/latency/stages.py "$OUT/samples.csv" "$OUT/relay.log"
