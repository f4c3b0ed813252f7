#!/usr/bin/env bash
# End-to-end benchmark: 100,000 notifications for 1,000 users, committed in 10 transactions of 10,000,
# relayed to the loopback Expo emulator by a release build of notify-relay running as a child
# process. Prints notifications/s, commit→provider latency percentiles and the relay's peak RSS.
#
#   bench/run.sh                      # the standard run (10 commits of 10,000 rows)
#   bench/run.sh --rate 5000          # paced inserts instead of as fast as Postgres takes them
#   bench/run.sh --notifications 200000 --relay-env NOTIFY__WORKER__CONCURRENCY=2000
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/services.sh
ensure_postgres
ensure_redis
cargo build --release --locked --bin notify-relay >&2
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres} \
  exec target/release/notify-relay loadgen "$@"
