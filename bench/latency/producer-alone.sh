#!/usr/bin/env bash
# Issue 14, target 5: what the producer alone costs Postgres. The same pgbench load as
# `loadgen --producer pgbench` (one autocommit single-row INSERT per transaction, RATE/s for
# SECONDS_PER_RUN s, 8 clients, the producer's sessions with PGOPTIONS), into a fresh migrated
# database, with no relay running: the rows stay pending. Prints pgbench's report, the Postgres
# server's CPU per 1,000 rows (the postmaster and every process of it, from /proc: the server
# must be on this machine) and the machine's steal time, so that a loadgen run's
# `cpu … postgres` can be split into the producer's part and the relay's.
#
#   PGOPTIONS="-c synchronous_commit=off" bench/latency/producer-alone.sh
#   NO_TRIGGER=1 bench/latency/producer-alone.sh     # without the doorbell trigger
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/services.sh
ensure_postgres
ensure_pgbench
RATE=${RATE:-2000}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-60}
CLIENTS=${CLIENTS:-8}
USERS=${USERS:-1000}
BIN=${NOTIFY_RELAY_BIN:-target/release/notify-relay}
[ -x "$BIN" ] || cargo build --release --locked --bin notify-relay >&2
SERVER=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
SERVER=${SERVER%/*}
DB=producer_alone_$$
WORK=$(mktemp -d)
q() { psql -X -q -At "$SERVER/$1" -c "$2"; }
cleanup() { q postgres "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT INT TERM
q postgres "CREATE DATABASE $DB"
DATABASE_URL="$SERVER/$DB" "$BIN" migrate >/dev/null
[ -z "${NO_TRIGGER:-}" ] || q "$DB" "ALTER TABLE notification DISABLE TRIGGER USER"
# The same script as loadgen's pgbench producer (emulators/src/loadgen.rs, pgbench_script).
cat >"$WORK/insert.sql" <<SQL
\\set u random(1, $USERS)
INSERT INTO notification (user_id, type, payload, created_at)
VALUES ('loadgen-user-' || :u, 'loadgen',
        jsonb_build_object('title', 'Load test', 'body', 'pgbench client ' || :client_id),
        clock_timestamp());
SQL

# The postmaster: the first line of postmaster.pid in the server's data directory, which only a
# server on this machine has for us to read.
pidfile="$(q "$DB" "SHOW data_directory")/postmaster.pid"
postmaster=$(head -1 "$pidfile" 2>/dev/null) && [ -r "/proc/$postmaster/stat" ] || {
  echo "producer-alone: cannot read $pidfile: the server's CPU is read from /proc, so it must run on this machine (and be readable by $(id -un))" >&2
  exit 2
}
# CPU ticks (USER_HZ) of the server: the postmaster, what it reaped, and every live child.
server_ticks() {
  local total=0 pid stat
  read -r -a stat <<<"$(sed 's/.*) //' "/proc/$postmaster/stat")"
  total=$((stat[11] + stat[12] + stat[13] + stat[14]))
  for pid in $(pgrep -P "$postmaster"); do
    read -r -a stat <<<"$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null)" || continue
    [ "${#stat[@]}" -gt 12 ] && total=$((total + stat[11] + stat[12]))
  done
  echo "$total"
}
machine() { awk '/^cpu /{ print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

echo "load before: $(uptime)" >&2
t0=$(server_ticks)
read -r steal0 all0 <<<"$(machine)"
pgbench -n -R "$RATE" -T "$SECONDS_PER_RUN" -c "$CLIENTS" -j 2 -f "$WORK/insert.sql" "$SERVER/$DB" >"$WORK/pgbench.txt" 2>&1 ||
  { cat "$WORK/pgbench.txt" >&2; exit 1; }
t1=$(server_ticks)
read -r steal1 all1 <<<"$(machine)"
echo "load after: $(uptime)" >&2
rows=$(q "$DB" "SELECT count(*) FROM notification")
grep -E "^(tps|number of transactions (actually processed|skipped)|latency average|rate limit schedule lag)" "$WORK/pgbench.txt"
awk -v t="$((t1 - t0))" -v n="$rows" -v s="$((steal1 - steal0))" -v a="$((all1 - all0))" -v trig="${NO_TRIGGER:+ (trigger disabled)}" 'BEGIN {
  printf "producer alone%s: %d rows, Postgres CPU %.0f ms per 1k rows; steal %.1f %% of the machine\n",
         trig, n, t * 10 * 1000 / (n > 0 ? n : 1), (a > 0 ? 100 * s / a : 0)
}'
