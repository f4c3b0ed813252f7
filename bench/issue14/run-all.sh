#!/usr/bin/env bash
# Issue 14: every target measured in one sitting, one after another on a quiet machine, with the
# release build. Writes each run's full output to $OUT (default /tmp/notify-relay-issue14) and
# prints the lines bench/README.md's tables are made of.
#
#   bench/issue14/run-all.sh              # everything (about 50 minutes here)
#   SKIP_10M=1 bench/issue14/run-all.sh   # without the 10,000,000 run (about 8 minutes)
#   TARGETS="2" bench/issue14/run-all.sh  # some of them: 1 2 3 4 5 profile (the default: all)
#
# BEFORE_BIN: a release binary of the code before the change, for the before/after rows
# (optional; e.g. built from the commit issue 14 started from).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/services.sh
ensure_postgres
ensure_redis
ensure_pgbench
cargo build --release --locked --bin notify-relay >&2
OUT=${OUT:-/tmp/notify-relay-issue14}
mkdir -p "$OUT"
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
BIN=target/release/notify-relay

TARGETS=${TARGETS:-1 2 3 4 5 profile}
want() { [[ " $TARGETS " == *" $1 "* ]]; }
summary() { grep -E "end to end|latency|retention|table |RSS|duplicates|^  cpu" "$1" | grep -v '^{' | sed 's/^/    /'; }
run() { # name, binary, loadgen args...
  local name=$1 bin=$2
  shift 2
  echo "== $name: $(uptime | sed 's/.*load/load/')"
  "$bin" loadgen "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
  summary "$OUT/$name.txt"
}

if want 1; then
  echo "# target 1: against BullMQ (3 rounds, alternating)"
  bench/vs-bullmq | tee "$OUT/vs-bullmq.txt"
fi

if want 2; then
  echo "# target 2: flat to ten million, retention at work (a 10% backlog 31 days old), on a private"
  echo "# Postgres configured as docs/sizing.md asks (bench/private-pg.sh: autovacuum on, max_wal_size 4 GB;"
  echo "# SYSTEM_PG=1 runs them on \$DATABASE_URL's server instead)"
  FLAT_DB=$DATABASE_URL
  if [ -z "${SYSTEM_PG:-}" ]; then
    . bench/private-pg.sh
    start_private_pg "${PRIVATE_PG_PORT:-55433}"
    FLAT_DB="$PRIVATE_PG_URL/postgres"
  fi
  # flat NAME N loadgen-args...: one run, and on the private server Postgres's work per
  # notification over it (bench/issue14/pg-work.sh), so that the sizes compare by work done.
  flat() {
    local name=$1 n=$2 offset=
    shift 2
    [ -z "${PRIVATE_PG_LOG:-}" ] || offset=$(bench/issue14/pg-work.sh start "$PRIVATE_PG_URL" "$PRIVATE_PG_LOG")
    DATABASE_URL=$FLAT_DB run "$name" "$BIN" --notifications "$n" "$@"
    [ -z "$offset" ] || bench/issue14/pg-work.sh report "$PRIVATE_PG_URL" "$n" "$PRIVATE_PG_LOG" "$offset" |
      tee "$OUT/$name-pg-work.txt" | sed 's/^/    /'
  }
  flat flat-100k 100000 --users 1000 --aged 10000
  flat flat-1m 1000000 --users 10000 --aged 100000
  if [ -n "${BEFORE_BIN:-}" ]; then
    # Before and after without the aged backlog (the code before had no --aged).
    run before-100k "$BEFORE_BIN" --notifications 100000 --users 1000
    run after-100k "$BIN" --notifications 100000 --users 1000
    run before-1m "$BEFORE_BIN" --notifications 1000000 --users 10000
    run after-1m "$BIN" --notifications 1000000 --users 10000
  fi
  if [ -z "${SKIP_10M:-}" ]; then
    flat flat-10m 10000000 --users 100000 --aged 1000000 --timeout-secs 3600
    [ -z "${PRIVATE_PG_LOG:-}" ] || echo "    autovacuum runs logged by the private server: $(grep -c 'automatic vacuum' "$PRIVATE_PG_LOG" || true)"
    # The machine's speed drifts over the 10M run's minutes: 100k again after it, on the same
    # server, so that the ratio can be read against the rate before and after.
    flat flat-100k-after 100000 --users 1000 --aged 10000
  fi
  [ -z "${PRIVATE_PG_DIR:-}" ] || stop_private_pg
fi

if want 3; then
  echo "# target 3: the doorbell's cost to the producer (1,000,000-row bulk insert, pgbench single-row commits)"
  bench/doorbell/run.sh | tee "$OUT/doorbell.txt"
fi

if want 4; then
  echo "# target 4: every provider, 30,000 notifications, two rounds"
  for round in 1 2; do
    for p in expo fcm apns email; do run "provider-$p-$round" "$BIN" --provider "$p" --notifications 30000; done
  done
fi

if want 5; then
  echo "# target 5: 2,000/s single-row commits by pgbench for 60 s (producer sessions with synchronous_commit off)"
  PGOPTIONS="-c synchronous_commit=off" OUT="$OUT/latency" bench/latency/run.sh | tee "$OUT/latency.txt"
  # The same pgbench load with no relay: the producer's own share of the run's Postgres CPU.
  PGOPTIONS="-c synchronous_commit=off" NOTIFY_RELAY_BIN=$BIN bench/latency/producer-alone.sh | tee "$OUT/producer-alone.txt"
fi

if want profile; then
  echo "# the profile: Postgres work per notification, 1,000,000 notifications, on a private Postgres"
  NOTIFY_RELAY_BIN=$BIN bench/pg-profile 1000000 --users 10000 >"$OUT/profile-after.txt" 2>&1
  grep -A3 "== WAL" "$OUT/profile-after.txt" | sed 's/^/    /'
  if [ -n "${BEFORE_BIN:-}" ]; then
    NOTIFY_RELAY_BIN=$BEFORE_BIN bench/pg-profile 1000000 --users 10000 >"$OUT/profile-before.txt" 2>&1
    grep -A3 "== WAL" "$OUT/profile-before.txt" | sed 's/^/    /'
  fi
fi
