#!/usr/bin/env bash
# Issue 14, target 3: what the doorbell trigger costs a producer. In a scratch database (created
# here, migrated by `notify-relay migrate`, dropped on exit however the script ends), with three
# doorbells in turn on `notification`:
#   row        V5's trigger: FOR EACH ROW, one pg_notify per row with the row's id
#   statement  V6's trigger (as migrated): FOR EACH STATEMENT, one pg_notify per statement
#   none       no doorbell at all
# it measures
#   (a) one INSERT … SELECT FROM generate_series of ROWS rows (autocommit: the time includes the
#       commit, where NOTIFY does its work), RUNS times per doorbell, round-robin;
#   (b) pgbench, one single-row INSERT per transaction (bench/doorbell/insert.sql), CLIENTS
#       clients for SECONDS s, RUNS times per doorbell, round-robin;
# and prints one Markdown table (min / median per doorbell).
#
#   bench/doorbell/run.sh                                  # 1,000,000 rows, 3 runs, 8 clients, 20 s
#   ROWS=100000 RUNS=1 SECONDS_PER_RUN=5 bench/doorbell/run.sh
#   SYNCHRONOUS_COMMIT=off bench/doorbell/run.sh           # pgbench with synchronous_commit = off
#
# Nothing listens in the scratch database (no relay): what is measured is the producer's side.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/services.sh
ensure_postgres

BASE=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
ROWS=${ROWS:-1000000}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-8}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
# pgbench's sessions only: `off` shows what the commit's WAL flush adds to NOTIFY's commit lock.
SYNCHRONOUS_COMMIT=${SYNCHRONOUS_COMMIT:-on}
DB="doorbell_bench_$(date +%s)_$$"
SCRATCH="${BASE%/*}/$DB"

cleanup() { psql "$BASE" -qAtX -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT

cargo build --locked --bin notify-relay >&2
psql "$BASE" -qAtX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB" >/dev/null
DATABASE_URL=$SCRATCH target/debug/notify-relay migrate >&2

sql() { PGOPTIONS="-c client_min_messages=warning" psql "$SCRATCH" -qAtX -v ON_ERROR_STOP=1 "$@"; }

# The statement trigger exactly as the migrations made it, to put back after the others.
STATEMENT_TRIGGER=$(sql -c "SELECT pg_get_triggerdef(oid) FROM pg_trigger
                             WHERE tgrelid = 'notification'::regclass AND tgname = 'notification_insert_notify'")
case $STATEMENT_TRIGGER in
  *"FOR EACH STATEMENT"*) ;;
  *) echo "the migrated doorbell is not a statement trigger: $STATEMENT_TRIGGER" >&2; exit 1 ;;
esac
# V5's doorbell: the function as migrations/V1__init.sql created it (V6 dropped it), under the
# trigger V5__producers.sql put on it.
sed -n '/^CREATE FUNCTION notification_notify_insert()/,/^\$\$;/p' migrations/V1__init.sql |
  sed 's/notification_notify_insert/bench_v5_notify_insert/' | sql >/dev/null
sql -Atc "SELECT 1 FROM pg_proc WHERE proname = 'bench_v5_notify_insert'" | grep -q 1 ||
  { echo "could not recreate V5's doorbell function from migrations/V1__init.sql" >&2; exit 1; }

use_doorbell() {
  local create
  case $1 in
    row) create="CREATE TRIGGER notification_insert_notify AFTER INSERT ON notification
                   FOR EACH ROW WHEN (NEW.status = 'pending' AND NEW.parent_id IS NULL)
                   EXECUTE FUNCTION bench_v5_notify_insert();" ;;
    statement) create="$STATEMENT_TRIGGER;" ;;
    none) create="" ;;
  esac
  sql -c "DROP TRIGGER IF EXISTS notification_insert_notify ON notification; $create"
}

# An empty table and a checkpoint before every run, so that no run pays for the one before.
fresh() { sql -c "TRUNCATE notification CASCADE" -c "CHECKPOINT"; }

bulk_ms() {
  fresh
  sql -c '\timing on' -c "INSERT INTO notification (user_id, type, payload)
                           SELECT 'u' || (g % 10000), 'bench', jsonb_build_object('title', 'n' || g)
                             FROM generate_series(1, $ROWS) g" |
    sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}

pgbench_tps() {
  fresh
  PGOPTIONS="-c synchronous_commit=$SYNCHRONOUS_COMMIT" \
    pgbench -n -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -f bench/doorbell/insert.sql "$SCRATCH" |
    sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p'
}

DOORBELLS=(row statement none)
declare -A BULK TPS
# measure <table> <function> <unit>: RUNS rounds of every doorbell, round-robin, into <table>.
measure() {
  local -n into=$1
  for run in $(seq 1 "$RUNS"); do
    for d in "${DOORBELLS[@]}"; do
      use_doorbell "$d"
      local got
      got=$($2)
      [[ -n $got ]] || { echo "run $run, $d: $2 printed no figure" >&2; exit 1; }
      into[$d]+="$got "
      echo "run $run, $d: $2 $got $3" >&2
    done
  done
}
measure BULK bulk_ms "ms for $ROWS rows"
measure TPS pgbench_tps commits/s

# min and median of a list of numbers, with `digits` decimals.
stats() {
  local digits=$1; shift
  printf '%s\n' "$@" | sort -g | awk -v d="$digits" '{ v[NR] = $1 }
    END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
          printf "%.*f %.*f", d, v[1], d, m }'
}

read -r _ none_med <<<"$(stats 0 ${BULK[none]})"
read -r _ none_tps_med <<<"$(stats 0 ${TPS[none]})"
echo
echo "| doorbell | bulk insert of $ROWS rows, min | median | median / none | single-row commits/s ($CLIENTS clients, ${SECONDS_PER_RUN} s, synchronous_commit $SYNCHRONOUS_COMMIT), min | median | median / none |"
echo "|---|---|---|---|---|---|---|"
for d in "${DOORBELLS[@]}"; do
  read -r bmin bmed <<<"$(stats 0 ${BULK[$d]})"
  read -r tmin tmed <<<"$(stats 0 ${TPS[$d]})"
  printf '| %s | %s ms | %s ms | %.2f× | %s | %s | %.2f× |\n' "$d" "$bmin" "$bmed" \
    "$(awk -v a="$bmed" -v b="$none_med" 'BEGIN { print a / b }')" "$tmin" "$tmed" \
    "$(awk -v a="$tmed" -v b="$none_tps_med" 'BEGIN { print a / b }')"
done
echo
echo "runs: bulk ms row [${BULK[row]% }] statement [${BULK[statement]% }] none [${BULK[none]% }];" \
  "commits/s row [${TPS[row]% }] statement [${TPS[statement]% }] none [${TPS[none]% }]"
