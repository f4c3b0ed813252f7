# Sourced by bench scripts: a private PostgreSQL for one benchmark, so that its statistics and its
# autovacuum are the run's alone and its settings are those docs/sizing.md asks of a production
# server (autovacuum on, max_wal_size a few GB), whatever the machine's own server runs with.
#
#   . bench/private-pg.sh
#   start_private_pg [port]      # sets PRIVATE_PG_URL (postgres://postgres@127.0.0.1:PORT) and PRIVATE_PG_DIR
#
# PRIVATE_PG_CONF: extra postgresql.conf lines. The server and its directory are removed when the
# sourcing script exits (an EXIT/INT/TERM trap), also on failure or Ctrl-C.

private_pg_bin() {
  local bin
  bin=$(pg_config --bindir 2>/dev/null || true)
  [ -x "$bin/initdb" ] || bin=/usr/lib/postgresql/15/bin
  [ -x "$bin/initdb" ] || { echo "private-pg: no initdb (PostgreSQL server package)" >&2; return 2; }
  echo "$bin"
}

# initdb refuses to run as root; the server then runs as the same unprivileged user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop_private_pg() {
  [ -n "${PRIVATE_PG_DIR:-}" ] || return 0
  as_pg "$PRIVATE_PG_BINDIR/pg_ctl" -D "$PRIVATE_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$PRIVATE_PG_DIR"
  PRIVATE_PG_DIR=
}

start_private_pg() {
  local port=${1:-55432}
  PRIVATE_PG_BINDIR=$(private_pg_bin)
  PRIVATE_PG_DIR=$(mktemp -d /tmp/private-pg.XXXXXX)
  trap stop_private_pg EXIT INT TERM
  [ "$(id -u)" = 0 ] && chown postgres "$PRIVATE_PG_DIR"
  as_pg "$PRIVATE_PG_BINDIR/initdb" -D "$PRIVATE_PG_DIR/data" -U postgres --auth=trust >/dev/null
  cat >>"$PRIVATE_PG_DIR/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PRIVATE_PG_DIR'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.max = 1000
pg_stat_statements.track = all
track_io_timing = on
autovacuum = on
log_autovacuum_min_duration = 0
max_wal_size = '4GB'
wal_keep_size = '4GB'
logging_collector = off
${PRIVATE_PG_CONF:-}
CONF
  as_pg "$PRIVATE_PG_BINDIR/pg_ctl" -D "$PRIVATE_PG_DIR/data" -l "$PRIVATE_PG_DIR/server.log" -w start >/dev/null
  PRIVATE_PG_URL="postgres://postgres@127.0.0.1:$port"
  PRIVATE_PG_LOG="$PRIVATE_PG_DIR/server.log"
}
