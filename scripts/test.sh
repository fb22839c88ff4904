#!/usr/bin/env bash
# Run every test: core unit tests, pgrx #[pg_test]s, SQL regression tests (pg_regress,
# expected output) and the end-to-end checks against numpy / pytrec_eval on SciFact.
# Sets up what is missing first (scripts/setup.sh), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. scripts/pg.sh

bash scripts/setup.sh

echo "==> core: cargo test -p nudge-core"
cargo test -p nudge-core --release

echo "==> extension: cargo pgrx test (installs the test build into the embedded Postgres)"
pgrx_data="$(mktemp -d /tmp/nudge-pgrx-test.XXXXXX)"
chown "$NUDGE_PG_USER" "$pgrx_data" 2>/dev/null || true
runas=()
[ "$(id -u)" -eq 0 ] && runas=(--runas "$NUDGE_PG_USER")
cargo pgrx test pg18 "${runas[@]}" --pgdata "$pgrx_data"
rm -rf "$pgrx_data"

datadir="$(mktemp -d /tmp/nudge-test-pg.XXXXXX)"
trap 'pg_down "$datadir"; rm -rf "$datadir" "$datadir.initdb.log"' EXIT
pg_up "$datadir"

echo "==> SQL regression tests (pg_regress)"
regress_out="$(mktemp -d /tmp/nudge-regress.XXXXXX)"
pgxs="$(dirname "$("$(nudge_pg_config)" --pgxs)")/.."
tests=$(cd tests/regress/sql && ls *.sql | sed 's/\.sql$//' | sort)
if ! "$pgxs/test/regress/pg_regress" --inputdir=tests/regress --outputdir="$regress_out" \
      --bindir="$(pg_bindir)" --host="$PGHOST" --port="$PGPORT" --user=postgres \
      --dbname=nudge_regress $tests; then
  cat "$regress_out/regression.diffs" 2>/dev/null | head -200
  exit 1
fi

echo "==> end-to-end (pytest)"
export NUDGE_REQUIRE_PG=1
set +e
"$NUDGE_VENV/bin/python" -m pytest tests/python -q -p no:cacheprovider
rc=$?
set -e
[ "$rc" -eq 5 ] && { echo "no Python tests collected"; rc=0; }
exit "$rc"
