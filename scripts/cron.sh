# pg_cron for the scheduled-refit tests (tests/python/test_cron.py); sourced.
#   cron_build [PG_CONFIG] -> build pg_cron 1.6.7 from the vendored tarball into the server of
#                             PG_CONFIG (default: the PostgreSQL 18 wheel's, nudge_pg_config),
#                             skipped when that server's stamp matches the tarball's sha256;
#                             returns 1 with a note when there is neither tarball nor build,
#                             2 when the build fails
#   cron_bindir_15         -> Debian's PostgreSQL 15 bin directory when postgresql-15-cron
#                             (1.4.2, scripts/setup.sh) is installed; else a note, returns 1
# pg_cron only adds files (pg_cron.so, pg_cron.control, pg_cron--*.sql) to the server's tree;
# a server loads it only with shared_preload_libraries = 'pg_cron'.
_cron_scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$_cron_scripts/env.sh"
: "${NUDGE_CRON_TARBALL:=$(dirname "$_cron_scripts")/../shared/vendor/pg_cron-1.6.7.tar.gz}"

cron_build() {
  local pg_config="${1:-$(nudge_pg_config)}" stamp sha work rc
  stamp="$("$pg_config" --sharedir)/extension/pg_cron.nudge-stamp"
  if [ ! -f "$NUDGE_CRON_TARBALL" ]; then
    if [ -f "$("$pg_config" --pkglibdir)/pg_cron.so" ]; then return 0; fi
    echo "pg_cron: no tarball at $NUDGE_CRON_TARBALL and no pg_cron in $("$pg_config" --pkglibdir); skipping" >&2
    return 1
  fi
  sha="$(sha256sum "$NUDGE_CRON_TARBALL" | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$sha" ] && [ -f "$("$pg_config" --pkglibdir)/pg_cron.so" ]; then
    return 0
  fi
  echo "==> pg_cron: building $(basename "$NUDGE_CRON_TARBALL") into $("$pg_config" --pkglibdir)" >&2
  work="$(mktemp -d /tmp/pg_cron-build.XXXXXX)"
  # CC=clang and no -Werror: the server's CFLAGS carry gcc-only flags clang warns about, and
  # -Wmissing-variable-declarations, which gcc 12 rejects (../shared/vendor/README.md).
  # shellcheck disable=SC2016  # $(libpq_srcdir) is make's
  ( set -e; cd "$work"; tar -xzf "$NUDGE_CRON_TARBALL"; cd pg_cron-*/
    make CC=clang PG_CONFIG="$pg_config" \
      PG_CPPFLAGS='-std=c99 -Wno-unused-parameter -Wno-unknown-warning-option -Wno-ignored-optimization-argument -Iinclude -I$(libpq_srcdir)'
    make CC=clang PG_CONFIG="$pg_config" install ) >"$work.log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then tail -30 "$work.log" >&2; echo "pg_cron: build failed, log $work.log" >&2; return 2; fi
  rm -rf "$work" "$work.log"
  echo "$sha" >"$stamp"
}

cron_bindir_15() {
  local bindir
  bindir="$(dirname "$(nudge_pg_config_for 15)")"
  if [ -f "$(dirname "$bindir")/lib/pg_cron.so" ]; then echo "$bindir"; return 0; fi
  echo "pg_cron: postgresql-15-cron is not installed; the PostgreSQL 15 cron test will be skipped" >&2
  return 1
}
