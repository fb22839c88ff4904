# Start/stop a private PostgreSQL cluster; sourced by the other scripts.
#   pg_up DATADIR [BINDIR]    -> initdb if needed, start on 127.0.0.1 at a free port, export
#                                PG* vars and put BINDIR first on PATH
#   pg_down DATADIR [BINDIR]  -> fast shutdown
#   regress_tests PGVECTOR_VERSION -> the tests/regress suites a server can run (run in the repo)
# BINDIR is the server's bin directory (`pg_config --bindir`); the default is the embedded
# PostgreSQL 18 wheel's. Any PostgreSQL works, e.g. Debian's /usr/lib/postgresql/15/bin.
# As root the server runs as $NUDGE_PG_USER (Postgres refuses to run as root).
: "${NUDGE_VENV:=/opt/nudge/venv}"
: "${NUDGE_PG_USER:=postgres}"

pg_bindir() { if [ -n "${1:-}" ]; then echo "$1"; else dirname "$(nudge_pg_config)"; fi; }

as_pg_user() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u "$NUDGE_PG_USER" -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

pg_up() {
  local datadir="$1" bindir port
  bindir="$(pg_bindir "${2:-}")"
  mkdir -p "$datadir"
  if [ "$(id -u)" -eq 0 ]; then chown "$NUDGE_PG_USER" "$datadir"; fi
  chmod 700 "$datadir"
  if [ ! -f "$datadir/PG_VERSION" ]; then
    as_pg_user "$bindir/initdb" -D "$datadir" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$datadir.initdb.log" 2>&1 \
      || { cat "$datadir.initdb.log"; return 1; }
  fi
  if [ -f "$datadir/postmaster.pid" ] && as_pg_user "$bindir/pg_ctl" -D "$datadir" status >/dev/null 2>&1; then
    port="$(sed -n 4p "$datadir/postmaster.pid")"
  else
    port="${NUDGE_PG_PORT:-$(free_port)}"
    as_pg_user "$bindir/pg_ctl" -D "$datadir" -l "$datadir/server.log" -w -t 60 \
      -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$datadir -c max_connections=50" start >/dev/null \
      || { cat "$datadir/server.log"; return 1; }
  fi
  export PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres
  export PATH="$bindir:$PATH"
}

pg_down() {
  local datadir="$1"
  [ -f "$datadir/postmaster.pid" ] || return 0
  as_pg_user "$(pg_bindir "${2:-}")/pg_ctl" -D "$datadir" -m fast -w stop >/dev/null 2>&1 || true
}

# version_ge A B: A >= B (dotted versions)
version_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$2" ]; }

# regress_tests PGVECTOR_VERSION ("" = none): the pg_regress tests this server can run, in
# order: nudge_fit first (it creates the tables the others use), then the rest by name. A
# file with a line "-- requires: pgvector >= X" runs only where pgvector X or later exists.
regress_tests() {
  local have="$1" f name req list="nudge_fit"
  for f in $(cd tests/regress/sql && ls -- *.sql | LC_ALL=C sort); do
    name="${f%.sql}"
    [ "$name" = nudge_fit ] && continue
    req="$(sed -n 's/^-- requires: pgvector >= \([0-9][0-9.]*\).*/\1/p' "tests/regress/sql/$f" | head -n1)"
    if [ -n "$req" ] && { [ -z "$have" ] || ! version_ge "$have" "$req"; }; then
      echo "    skipped $name: needs pgvector >= $req, this server has ${have:-no pgvector}" >&2
      continue
    fi
    list="$list $name"
  done
  echo "$list"
}
