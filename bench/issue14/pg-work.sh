#!/usr/bin/env bash
# Postgres's work per notification over one loadgen run, so that runs of different sizes can be
# compared by what they cost the server rather than by their time on a machine whose speed drifts:
# buffers touched and time per notification for each statement (pg_stat_statements), and what
# autovacuum spent meanwhile (its log lines: runs, buffers, CPU and elapsed seconds per table).
#
#   bench/issue14/pg-work.sh start SERVER LOG         # before the run: resets the statistics;
#                                                     # prints the log's size (the run's offset)
#   bench/issue14/pg-work.sh report SERVER N LOG OFFSET   # after it: per notification of N
#
# SERVER is a URL without a database (the private server of bench/private-pg.sh, which loads
# pg_stat_statements and logs every autovacuum run); LOG its server log.
set -euo pipefail
cmd=${1:?start or report}
SERVER=${2:?server URL (without a database)}
q() { psql -X -q "$SERVER/postgres" "$@"; }
case $cmd in
  start)
    LOG=${3:?server log}
    q -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" \
      -c "SELECT pg_stat_statements_reset()" >/dev/null
    stat -c %s "$LOG"
    ;;
  report)
    N=${3:?number of notifications}
    LOG=${4:?server log}
    OFFSET=${5:?log offset from start}
    [[ $N =~ ^[0-9]+$ && $N -ge 1 ]] || { echo "pg-work: N must be a positive number" >&2; exit 2; }
    echo "statements, per notification (calls over the run; buffers = shared hits + reads):"
    q -P footer=off <<SQL
SELECT calls,
       round(rows::numeric / $N, 2) AS rows_per_notif,
       round((shared_blks_hit + shared_blks_read)::numeric / $N, 1) AS buffers_per_notif,
       round(shared_blks_read::numeric / $N, 2) AS reads_per_notif,
       round((total_exec_time * 1000 / $N)::numeric, 1) AS us_per_notif,
       left(regexp_replace(query, '\s+', ' ', 'g'), 70) AS statement
  FROM pg_stat_statements
 WHERE total_exec_time * 1000 / $N >= 0.5
 ORDER BY total_exec_time DESC
 LIMIT 12;
SQL
    q -At -c "SELECT 'all statements: ' || round((sum(shared_blks_hit + shared_blks_read))::numeric / $N, 1)
                     || ' buffers and ' || round((sum(total_exec_time) * 1000 / $N)::numeric, 1)
                     || ' us of execution per notification' FROM pg_stat_statements"
    tail -c +"$((OFFSET + 1))" "$LOG" | python3 -c '
import re, sys
n = int(sys.argv[1])
runs = {}
table = None
for line in sys.stdin:
    m = re.search(r"automatic vacuum of table \"[^.]*\.[^.]*\.([^\"]+)\"", line)
    if m:
        table = m.group(1)
        runs.setdefault(table, [0, 0, 0.0, 0.0])[0] += 1
        continue
    if table is None:
        continue
    m = re.search(r"buffer usage: (\d+) hits, (\d+) misses", line)
    if m:
        runs[table][1] += int(m.group(1)) + int(m.group(2))
    m = re.search(r"CPU: user: ([\d.]+) s, system: ([\d.]+) s, elapsed: ([\d.]+) s", line)
    if m:
        runs[table][2] += float(m.group(1)) + float(m.group(2))
        runs[table][3] += float(m.group(3))
        table = None
if not runs:
    print("autovacuum: no run logged")
for t, (k, bufs, cpu, elapsed) in sorted(runs.items(), key=lambda kv: -kv[1][3]):
    print(f"autovacuum of {t}: {k} runs, {bufs / n:.1f} buffers and {cpu * 1e6 / n:.1f} us CPU per notification, "
          f"{elapsed:.1f} s elapsed in all")
' "$N"
    ;;
  *) echo "pg-work: start or report" >&2; exit 2 ;;
esac
