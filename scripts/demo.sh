#!/usr/bin/env bash
# Set everything up, install the release build into the embedded PostgreSQL 18 + pgvector,
# start a private server and run the SciFact demo. The server keeps running afterwards so
# you can explore with psql; `scripts/demo.sh stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. scripts/pg.sh

datadir="$PWD/.local/pgdata"
# The server runs as an unprivileged user when we are root: it must reach the data dir.
if [ "$(id -u)" -eq 0 ] && ! runuser -u "$NUDGE_PG_USER" -- test -x "$PWD/.local" 2>/dev/null; then
  mkdir -p .local
  if ! runuser -u "$NUDGE_PG_USER" -- test -x "$PWD/.local"; then
    datadir="/var/tmp/nudge-demo-$(echo "$PWD" | md5sum | cut -c1-8)/pgdata"
  fi
fi
if [ "${1:-}" = "stop" ]; then pg_down "$datadir"; echo "stopped"; exit 0; fi

bash scripts/setup.sh
echo "==> building and installing the release build (a few minutes the first time)"
cargo pgrx install --release --pg-config "$(nudge_pg_config)" >/dev/null
pg_up "$datadir"
echo "==> PostgreSQL 18 on 127.0.0.1:$PGPORT (data in $datadir)"
echo
"$NUDGE_VENV/bin/python" scripts/demo.py
echo
echo "Explore:  $(pg_bindir)/psql -h 127.0.0.1 -p $PGPORT -U postgres nudge_demo"
echo "Stop:     scripts/demo.sh stop"
