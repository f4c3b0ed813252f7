# Shared by scripts/test and scripts/run: make sure PostgreSQL and Redis answer on their
# standard loopback ports, installing (Debian/Ubuntu) and starting them when they do not.

say() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_packages() {
  command -v apt-get >/dev/null || { say "cannot install $*: no apt-get; install them yourself"; exit 1; }
  say "installing $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then return; fi
  command -v pg_ctlcluster >/dev/null || install_packages postgresql postgresql-client
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  # Local test clusters only: let the postgres role in over loopback without a password.
  if ! grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  fi
  say "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 5432 -q && return; sleep 0.5; done
  say "PostgreSQL did not come up"; exit 1
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
  command -v redis-server >/dev/null || install_packages redis-server
  say "starting Redis"
  mkdir -p /tmp/notify-relay-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/notify-relay-redis --logfile /tmp/notify-relay-redis/redis.log
  for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return; sleep 0.25; done
  say "Redis did not come up"; exit 1
}

# pgbench (the PostgreSQL client package has it): `loadgen --producer pgbench` and its test.
ensure_pgbench() {
  command -v pgbench >/dev/null || install_packages postgresql-client
}
