#!/usr/bin/env bash
# Samples, every INTERVAL seconds, what a loadgen run costs its PostgreSQL server, without
# scanning a table: rows written (pg_stat_user_tables), buffer reads that missed shared_buffers
# (pg_statio_user_tables, heap and indexes), WAL bytes and full-page images (pg_stat_wal),
# checkpoints, and the vacuum in progress. One line per sample, deltas since the last one.
#
#   bench/issue14/sample-pg.sh postgres://postgres@127.0.0.1:55433 [INTERVAL] > samples.txt
#
# It waits for the run's `loadgen_*` database and stops when that database is gone.
set -euo pipefail
SERVER=${1:?server URL (without a database)}
INTERVAL=${2:-30}
q() { psql -X -qAt -F' ' "$@"; }
db=
until [ -n "$db" ]; do
  db=$(q "$SERVER/postgres" -c "select datname from pg_database where datname like 'loadgen_%' limit 1" 2>/dev/null || true)
  [ -n "$db" ] || sleep 1
done
echo "# database $db, every $INTERVAL s"
echo "# t_s  notif_ins/s  notif_upd/s  notif_hot%  deliv_ins/s  heap_miss/s  idx_miss/s  hit%  wal_MB/s  fpi/s  ckpt  vacuum"
prev=
start=$(date +%s)
while :; do
  row=$(q "$SERVER/$db" -c "
    with t as (
      select
        sum(n_tup_ins) filter (where relname = 'notification') ni,
        sum(n_tup_upd) filter (where relname = 'notification') nu,
        sum(n_tup_hot_upd) filter (where relname = 'notification') nh,
        sum(n_tup_ins) filter (where relname = 'delivery') di
      from pg_stat_user_tables),
    io as (
      select sum(heap_blks_read) hr, sum(coalesce(idx_blks_read, 0)) ir,
             sum(heap_blks_hit + coalesce(idx_blks_hit, 0)) hits
      from pg_statio_user_tables)
    select extract(epoch from now())::bigint, t.ni, t.nu, t.nh, t.di, io.hr, io.ir, io.hits,
           (select wal_bytes::bigint from pg_stat_wal), (select wal_fpi from pg_stat_wal),
           (select checkpoints_timed + checkpoints_req from pg_stat_bgwriter),
           coalesce((select string_agg(c.relname || ':' || p.phase, ',') from pg_stat_progress_vacuum p
                     join pg_class c on c.oid = p.relid), '-')
    from t, io" 2>/dev/null) || break
  [ -n "$row" ] || break
  if [ -n "$prev" ]; then
    python3 - "$prev" "$row" "$start" <<'PY'
import sys
p = sys.argv[1].split(' ', 11); r = sys.argv[2].split(' ', 11); start = int(sys.argv[3])
f = lambda i: float(r[i] or 0) - float(p[i] or 0)
dt = f(0) or 1
upd = f(2); miss = f(5) + f(6); hits = f(7)
print(f"{int(r[0]) - start:5d} {f(1)/dt:11.0f} {f(2)/dt:12.0f} {100*f(3)/upd if upd else 0:10.1f} {f(4)/dt:11.0f} "
      f"{f(5)/dt:11.0f} {f(6)/dt:10.0f} {100*hits/(hits+miss) if hits+miss else 100:5.1f} "
      f"{f(8)/dt/1e6:9.1f} {f(9)/dt:6.0f} {int(f(10)):5d}  {r[11]}", flush=True)
PY
  fi
  prev=$row
  sleep "$INTERVAL"
done
